"""Outgoing sync from Python, against the local stack: a Python object as
the core's Outbox (plain and coroutine methods, both flavours). One engine
run sends the host's message through Postfix; the host sees `sent` with the
Message-ID, and the message is read back from the recipient's INBOX over
IMAP. A sender other than the mailbox's address never leaves: the host sees
`failed` with `sender_not_allowed`."""

import asyncio
import email
import imaplib
import ssl
import time

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
