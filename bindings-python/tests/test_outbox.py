"""Outgoing sync from Python, against the local stack: a Python object as
the core's Outbox (plain and coroutine methods, both flavours). One engine
run sends the host's message through Postfix; the host sees `sent` with the
Message-ID, and the message is read back from the recipient's INBOX over
IMAP. A sender other than the mailbox's address never leaves: the host sees
`failed` with `sender_not_allowed`; fixed and handed to `Engine.resend`, it
goes out with the Message-ID it was given. `Engine.with_owner` names the
leases (read from the SQLite file while the engine holds one);
`Engine.seed_outgoing` makes an outbox-only mailbox due."""

import asyncio
import email
import imaplib
import sqlite3
import ssl
import time
from datetime import datetime, timezone

import pytest

import mailsync
from mailsync import ComposedMessage, MailAddress, OutgoingContent, OutgoingMessage

from conftest import FLAVOURS, Env, call, stack_password
from test_engine import ENGINES, enabled, unique

RECIPIENT = "sync18@example.test"
# One sender per case: a grant per test.
SENDERS = {
    ("async", "plain"): "sync15@example.test",
    ("async", "coroutine"): "sync16@example.test",
    ("blocking", "plain"): "sync19@example.test",
    ("blocking", "coroutine"): "sync20@example.test",
}


class NoSink:
    """Incoming mail is not what these tests are about."""

    def deliver(self, messages):
        return ["stored"] * len(messages)


class HostOutbox:
    """A host outbox in memory: a message stays pending until it is reported
    sent or failed; every call is kept."""

    def __init__(self, *messages):
        self.queue = list(messages)
        self.asked = []  # (mailbox_id, limit) per pending call
        self.reports = []

    def take(self, mailbox_id, limit):
        self.asked.append((mailbox_id, limit))
        return self.queue[:limit]

    def keep(self, report):
        assert isinstance(report, mailsync.SendReport)
        if isinstance(report.outcome, (mailsync.SendOutcome.Sent, mailsync.SendOutcome.Failed)):
            self.queue = [m for m in self.queue if m.id != report.id]
        self.reports.append(report)


class PlainOutbox(HostOutbox):
    def pending(self, mailbox_id, limit):
        return self.take(mailbox_id, limit)

    def report(self, report):
        self.keep(report)


class CoroutineOutbox(HostOutbox):
    async def pending(self, mailbox_id, limit):
        await asyncio.sleep(0)
        return self.take(mailbox_id, limit)

    async def report(self, report):
        await asyncio.sleep(0)
        self.keep(report)


OUTBOXES = {"plain": PlainOutbox, "coroutine": CoroutineOutbox}


def composed(id, to, subject, text, sender=None):
    message = ComposedMessage(to=[MailAddress(None, a) for a in to], subject=subject, text=text, from_=sender)
    assert message.from_ == sender
    return OutgoingMessage(id, OutgoingContent.Composed(message))


def imap_find(stack, address, message_id, timeout=30.0):
    """The bytes of the message with this Message-ID in `address`'s INBOX
    (waits for Postfix to deliver it), read over IMAP (TLS, read-only)."""
    context = ssl.create_default_context(cafile=stack["ca_cert"])
    deadline = time.monotonic() + timeout
    with imaplib.IMAP4_SSL(stack["imap"]["host"], stack["imap"]["tls_port"], ssl_context=context) as imap:
        imap.login(address, stack_password(stack, address))
        while True:
            imap.select("INBOX", readonly=True)
            typ, data = imap.uid("SEARCH", "HEADER", "Message-ID", message_id)
            assert typ == "OK", data
            uids = data[0].split()
            if uids:
                assert len(uids) == 1, uids  # received once
                typ, data = imap.uid("FETCH", uids[0], "(BODY.PEEK[])")
                assert typ == "OK", data
                return data[0][1]
            assert time.monotonic() < deadline, f"<{message_id}> did not arrive in {address}'s INBOX"
            time.sleep(0.2)


@pytest.mark.parametrize("kind", OUTBOXES)
@pytest.mark.parametrize("name", FLAVOURS)
def test_the_host_outbox_is_sent_through_postfix_and_read_back(stack, tmp_path, name, kind):
    async def main():
        env = await Env(stack, FLAVOURS[name], tmp_path / "m.db").open()
        sender = SENDERS[(name, kind)]
        mailbox = await enabled(env, sender)
        tag = unique("py-outbox")
        outbox = OUTBOXES[kind](composed("crm-1", [RECIPIENT], f"{tag} hello", "Hello from the CRM.\n"))
        engine = ENGINES[name].with_outbox(env.sync, NoSink(), outbox, mailsync.default_engine_options())
        assert isinstance(engine, ENGINES[name])

        report = await call(engine, "run_once", mailbox.id)
        assert report.outgoing_error_code is None, report.outgoing_error_message
        assert (report.sent, report.send_failed, report.send_deferred) == (1, 0, 0)
        assert outbox.asked and outbox.asked[0] == (mailbox.id, mailsync.default_engine_options().sends_per_cycle)

        [sent] = outbox.reports
        assert (sent.mailbox_id, sent.id, sent.attempts) == (mailbox.id, "crm-1", 1)
        assert isinstance(sent.outcome, mailsync.SendOutcome.Sent), sent
        assert sent.outcome.reply.startswith("250"), sent.outcome.reply
        assert sent.outcome.refused == []
        assert sent.message_id and "<" not in sent.message_id
        assert outbox.queue == []

        raw = await asyncio.to_thread(imap_find, stack, RECIPIENT, sent.message_id)
        parsed = email.message_from_bytes(raw)
        assert parsed["Message-ID"] == f"<{sent.message_id}>"
        assert parsed["Subject"] == f"{tag} hello"
        assert sender in parsed["From"] and RECIPIENT in parsed["To"]
        assert "Hello from the CRM." in parsed.get_payload(decode=True).decode()

        # Sent once: a second run sends nothing again.
        again = await call(engine, "run_once", mailbox.id)
        assert (again.sent, again.send_failed, again.outgoing_error_code) == (0, 0, None)
        assert len(outbox.reports) == 1

        # A sender other than the mailbox's address never leaves: failed, with its code.
        outbox.queue.append(
            composed("crm-2", [RECIPIENT], f"{tag} forged", "no", sender=MailAddress("CEO", "ceo@example.test"))
        )
        refused = await call(engine, "run_once", mailbox.id)
        assert (refused.sent, refused.send_failed) == (0, 1)
        failed = outbox.reports[-1]
        assert (failed.id, failed.attempts) == ("crm-2", 0)
        assert isinstance(failed.outcome, mailsync.SendOutcome.Failed), failed
        assert failed.outcome.code == "sender_not_allowed"
        assert failed.outcome.smtp_code is None and "ceo@example.test" in failed.outcome.reply
        assert outbox.queue == []
        await call(env.sync, "close")

    asyncio.run(main())


def test_an_outbox_without_its_methods_is_refused(stack, tmp_path):
    async def main():
        env = await Env(stack, mailsync.MailSync, tmp_path / "m.db").open()

        class NoReport:
            def pending(self, mailbox_id, limit):
                return []

        with pytest.raises(TypeError, match="report"):
            mailsync.Engine.with_outbox(env.sync, NoSink(), NoReport(), mailsync.default_engine_options())
        await call(env.sync, "close")

    asyncio.run(main())


def test_a_failing_pending_fails_the_outgoing_cycle(stack, tmp_path):
    async def main():
        env = await Env(stack, mailsync.MailSync, tmp_path / "m.db").open()
        mailbox = await enabled(env, "sync15@example.test")

        class Broken:
            def pending(self, mailbox_id, limit):
                raise RuntimeError("the CRM is down")

            def report(self, report):
                raise AssertionError("nothing to report")

        engine = mailsync.Engine.with_outbox(env.sync, NoSink(), Broken(), mailsync.default_engine_options())
        report = await engine.run_once(mailbox.id)
        assert report.outgoing_error_code == "sink_failed"
        assert "the CRM is down" in report.outgoing_error_message
        await call(env.sync, "close")

    asyncio.run(main())


def leases(db_path, mailbox_id):
    """(kind, owner) of the leases held on a mailbox, read from the SQLite
    file as an operator would (`mailsync workers` lists the same rows)."""
    with sqlite3.connect(f"file:{db_path}?mode=ro", uri=True) as db:
        return db.execute("SELECT kind, owner FROM leases WHERE mailbox_id = ? ORDER BY kind", (mailbox_id,)).fetchall()


@pytest.mark.parametrize("name", FLAVOURS)
def test_resend_sends_a_failed_message_again_with_its_message_id(stack, tmp_path, name):
    async def main():
        env = await Env(stack, FLAVOURS[name], tmp_path / "m.db").open()
        sender = SENDERS[(name, "plain")]
        mailbox = await enabled(env, sender)
        tag = unique("py-resend")
        forged = composed("crm-r", [RECIPIENT], f"{tag} resent", "Sent on the second try.\n",
                          sender=MailAddress("CEO", "ceo@example.test"))
        fixed = composed("crm-r", [RECIPIENT], f"{tag} resent", "Sent on the second try.\n")
        outbox = PlainOutbox(forged)
        engine = ENGINES[name].with_outbox(env.sync, NoSink(), outbox, mailsync.default_engine_options())

        first = await call(engine, "run_once", mailbox.id)
        assert (first.sent, first.send_failed) == (0, 1), first
        failed = outbox.reports[-1]
        assert isinstance(failed.outcome, mailsync.SendOutcome.Failed), failed
        assert failed.outcome.code == "sender_not_allowed"
        message_id = failed.message_id
        assert message_id and "<" not in message_id

        # Fixed by the host but not handed to resend: a failed message is
        # reported failed again, never sent by itself.
        outbox.queue.append(fixed)
        still = await call(engine, "run_once", mailbox.id)
        assert still.sent == 0, still
        again = outbox.reports[-1]
        assert (again.id, again.message_id) == ("crm-r", message_id)
        assert isinstance(again.outcome, mailsync.SendOutcome.Failed), again

        # resend: back to pending; the next cycle sends it with its Message-ID.
        outbox.queue.append(fixed)
        assert await call(engine, "resend", mailbox.id, "crm-r") is None
        report = await call(engine, "run_once", mailbox.id)
        assert (report.sent, report.send_failed, report.outgoing_error_code) == (1, 0, None), report
        sent = outbox.reports[-1]
        assert (sent.id, sent.message_id) == ("crm-r", message_id)
        assert isinstance(sent.outcome, mailsync.SendOutcome.Sent), sent
        assert outbox.queue == []
        raw = await asyncio.to_thread(imap_find, stack, RECIPIENT, message_id)
        parsed = email.message_from_bytes(raw)
        assert parsed["Message-ID"] == f"<{message_id}>" and parsed["Subject"] == f"{tag} resent"
        assert sender in parsed["From"]

        # A sent message is never sent again; an unknown id is not found.
        with pytest.raises(mailsync.ValidationError) as caught:
            await call(engine, "resend", mailbox.id, "crm-r")
        assert (caught.value.code, caught.value.field) == ("validation", "id")
        with pytest.raises(mailsync.NotFoundError):
            await call(engine, "resend", mailbox.id, "crm-none")
        await call(env.sync, "close")

    asyncio.run(main())


@pytest.mark.parametrize("name", FLAVOURS)
def test_with_owner_names_the_leases_and_takes_an_optional_outbox(stack, tmp_path, name):
    async def main():
        env = await Env(stack, FLAVOURS[name], tmp_path / "m.db").open()
        mailbox = await enabled(env, SENDERS[(name, "coroutine")])
        options = mailsync.default_engine_options()
        owner = f"crm-worker-{name}-7"

        class Watching(PlainOutbox):
            """Reads the leases while the engine holds the mailbox's send lease."""

            def __init__(self):
                super().__init__()
                self.seen = []

            def pending(self, mailbox_id, limit):
                self.seen.append(leases(env.db_path, mailbox_id))
                return super().pending(mailbox_id, limit)

        outbox = Watching()
        engine = ENGINES[name].with_owner(env.sync, NoSink(), options, owner, outbox)
        assert isinstance(engine, ENGINES[name])
        assert engine.owner == owner and engine.options == options
        report = await call(engine, "run_once", mailbox.id)
        assert report.error_code is None and report.outgoing_error_code is None, report
        assert outbox.asked == [(mailbox.id, options.sends_per_cycle)]  # the outbox is used
        [held] = outbox.seen
        assert ("send", owner) in held and {o for _, o in held} == {owner}, held
        deadline = time.monotonic() + 10
        while leases(env.db_path, mailbox.id):  # given back
            assert time.monotonic() < deadline, leases(env.db_path, mailbox.id)
            await asyncio.sleep(0.05)

        # Without an outbox (keyword or left out): no outgoing cycle.
        bare = ENGINES[name].with_owner(env.sync, NoSink(), options, owner="crm-worker-8", outbox=None)
        assert bare.owner == "crm-worker-8"
        report = await call(bare, "run_once", mailbox.id)
        assert report.error_code is None and report.sent == 0 and len(outbox.asked) == 1

        # The others are named by the engine; an empty name is refused.
        assert ENGINES[name](env.sync, NoSink(), options).owner.startswith("engine-")
        with pytest.raises(mailsync.ValidationError) as caught:
            ENGINES[name].with_owner(env.sync, NoSink(), options, "  ", outbox)
        assert caught.value.field == "owner"
        with pytest.raises(TypeError, match="report"):
            ENGINES[name].with_owner(env.sync, NoSink(), options, owner, object())
        await call(env.sync, "close")

    asyncio.run(main())


@pytest.mark.parametrize("name", FLAVOURS)
def test_seed_outgoing_makes_an_outbox_only_mailbox_due(stack, tmp_path, name):
    async def main():
        env = await Env(stack, FLAVOURS[name], tmp_path / "m.db").open()
        mailbox = await enabled(env, SENDERS[(name, "plain")], incoming_delivery="none")
        tag = unique("py-seed")
        outbox = PlainOutbox(composed("crm-s", [RECIPIENT], f"{tag} seeded", "Sent by a scheduled cycle.\n"))
        options = mailsync.default_engine_options()
        engine = ENGINES[name].with_outbox(env.sync, NoSink(), outbox, options)

        async def row():
            [row] = [s for s in await call(engine, "status") if s.mailbox_id == mailbox.id]
            return row

        # Enabled, but with no incoming cycle nothing ever scheduled its outgoing mail.
        before = await row()
        assert isinstance(before.outgoing, mailsync.DirectionStatus.Enabled), before.outgoing
        assert before.outbox is None and before.next_send_due is None and before.next_due is None

        # An engine without an outbox seeds nothing.
        await call(ENGINES[name](env.sync, NoSink(), options), "seed_outgoing")
        assert (await row()).next_send_due is None

        assert await call(engine, "seed_outgoing") is None
        seeded = await row()
        assert seeded.outbox is not None and seeded.outbox.mailbox_id == mailbox.id
        assert seeded.next_send_due is not None and seeded.next_send_due <= datetime.now(timezone.utc)
        assert outbox.asked == []  # scheduled, not sent

        # Due: the next scheduled run sends its mail.
        reports = [r for r in await call(engine, "run_due") if r.mailbox_id == mailbox.id]
        assert [(r.sent, r.outgoing_error_code) for r in reports] == [(1, None)], reports
        assert isinstance(outbox.reports[-1].outcome, mailsync.SendOutcome.Sent)
        after = await row()
        assert after.next_send_due is not None and after.next_send_due > datetime.now(timezone.utc)
        await call(env.sync, "close")

    asyncio.run(main())
