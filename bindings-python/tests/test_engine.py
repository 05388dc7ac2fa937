"""The sync engine from Python, against the local stack: a Python object as
the core's MessageSink (plain and coroutine methods, both flavours), sink
failures, the incoming filter's questions, progress, start/stop.

Each test delivers its own mail (tests/stack/bin/deliver) with a unique
subject prefix to an INBOX that keeps mail across runs (and may get mail
from other suites): mailboxes take in mail received from 2 s before they
were created, and assertions look at this test's messages only."""

import asyncio
import email
import gc
import hashlib
import imaplib
import ssl
import subprocess
import threading
import time
import uuid
import weakref
from datetime import datetime, timedelta, timezone

import pytest

import mailsync
from mailsync import StoreLocation

from conftest import FLAVOURS, STACK, Env, Recorder, call, open_store

ENGINES = {"async": mailsync.Engine, "blocking": mailsync.blocking.Engine}


def unique(prefix):
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def deliver(address, count, prefix, *extra):
    """Delivers `count` messages ("<prefix> i/count"); their Message-IDs without brackets."""
    out = subprocess.run(
        [str(STACK / "bin" / "deliver"), address, "--count", str(count), "--subject-prefix", prefix, *extra],
        check=True, capture_output=True, text=True,
    )
    return [line.strip().strip("<>") for line in out.stdout.split()]


def mine(messages, prefix):
    return [m for m in messages if (m.subject or "").startswith(prefix + " ")]


def index(message):
    """i of a subject "<prefix> i/n"."""
    return int(message.subject.rsplit(" ", 1)[1].split("/")[0])


def expected_key(raw, message_id):
    """The core's key: `mid:<Message-ID>#<SHA-256 of the header section, 16 bytes hex>`."""
    end = raw.find(b"\r\n\r\n")
    header = raw[: end + 2] if end >= 0 else raw
    return f"mid:{message_id}#{hashlib.sha256(header).digest()[:16].hex()}"


async def enabled(env, address, **fields):
    """A connected, tested and enabled mailbox taking in mail from now on."""
    fields.setdefault("incoming_filter", "all")
    fields.setdefault("process_email_received_after", datetime.now(timezone.utc) - timedelta(seconds=2))
    mailbox = await env.connected(address, **fields)
    report = await env.check(mailbox.id)
    assert report.outcome == "success", repr(report)
    return mailbox


def imap_raw(stack, address, token, uids):
    """The bytes the server holds for these UIDs (XOAUTH2, read-only)."""
    context = ssl.create_default_context(cafile=stack["ca_cert"])
    with imaplib.IMAP4_SSL(stack["imap"]["host"], stack["imap"]["tls_port"], ssl_context=context) as imap:
        imap.authenticate("XOAUTH2", lambda _: f"user={address}\x01auth=Bearer {token}\x01\x01".encode())
        imap.select("INBOX", readonly=True)
        raws = {}
        for uid in uids:
            typ, data = imap.uid("FETCH", str(uid), "(BODY.PEEK[])")
            assert typ == "OK", data
            raws[uid] = data[0][1]
        return raws


async def eventually(predicate, timeout=10.0, what="condition"):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {timeout}s for {what}")
        await asyncio.sleep(0.02)


class Store:
    """A host store keyed by message key. `handed`: every message the engine
    handed over (also in batches that failed), `acknowledged`: how many the
    sink answered for, `calls`: (thread, running loop or None) per call."""

    def __init__(self):
        self.by_key, self.handed, self.acknowledged, self.calls = {}, [], 0, []

    def where(self):
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        self.calls.append((threading.get_ident(), loop))

    def store(self, messages):
        self.where()
        assert isinstance(messages, list)
        for m in messages:
            self.handed.append(m)
            self.by_key[m.key] = m
        self.acknowledged += len(messages)
        return ["stored"] * len(messages)


class PlainSink(Store):
    def deliver(self, messages):
        return self.store(messages)


class CoroutineSink(Store):
    async def deliver(self, messages):
        await asyncio.sleep(0)
        return self.store(messages)


SINKS = {"plain": PlainSink, "coroutine": CoroutineSink}
# One account per case: a grant per test, mail of one test in one INBOX.
ACCOUNTS = {
    ("async", "plain"): "sync11@example.test",
    ("async", "coroutine"): "sync12@example.test",
    ("blocking", "plain"): "sync13@example.test",
    ("blocking", "coroutine"): "sync14@example.test",
}


@pytest.mark.parametrize("kind", SINKS)
@pytest.mark.parametrize("name", FLAVOURS)
def test_a_real_sync_hands_every_message_once_with_its_fields(stack, tmp_path, name, kind):
    async def main():
        env = await Env(stack, FLAVOURS[name], tmp_path / "m.db").open()
        address = ACCOUNTS[(name, kind)]
        mailbox = await enabled(env, address)
        prefix = unique("engine-a")
        ids = deliver(address, 20, prefix)
        sink = SINKS[kind]()
        engine = ENGINES[name](env.sync, sink, mailsync.default_engine_options())
        assert engine.options == mailsync.default_engine_options()
        progress = Recorder(skip_snapshots=False)
        subscription = engine.progress(progress)

        report = await call(engine, "run_once", mailbox.id)
        assert isinstance(report, mailsync.CycleReport)
        assert report.error_code is None and report.error_message is None, report.error_message
        assert (report.mailbox_id, report.email) == (mailbox.id, address)
        got = mine(sink.handed, prefix)
        assert sorted(m.message_id for m in got) == sorted(ids)  # every message, once
        assert sorted(index(m) for m in got) == list(range(1, 21))
        assert report.delivered == sink.acknowledged == len(sink.handed) >= 20
        assert report.bytes == sum(len(m.raw) for m in sink.handed)

        for m in got:
            assert isinstance(m, mailsync.IncomingMessage) and m.mailbox_id == mailbox.id
            assert isinstance(m.raw, bytes) and len(m.raw) == m.size and not m.unparsed
            assert m.key == expected_key(m.raw, m.message_id)
            assert [(a.name, a.address) for a in m.from_] == [("Test Sender", "sender@outside.example")]
            assert [a.address for a in m.to] == [address] and m.cc == []
            parsed = email.message_from_bytes(m.raw)
            assert (parsed["Message-ID"], parsed["Subject"]) == (f"<{m.message_id}>", m.subject)
            assert m.uid > 0 and m.uid_validity > 0 and m.uidl is None and m.provider_id is None
            assert m.date.tzinfo is not None and m.received_at.tzinfo is not None
            assert f"RawMessage({m.size} bytes)" in repr(m)
        token = (await call(env.sync.connections, "access_token", mailbox.id)).token
        server = await asyncio.to_thread(imap_raw, stack, address, token, [m.uid for m in got])
        assert all(server[m.uid] == m.raw for m in got)  # the server's bytes, unchanged

        # Where the sink ran: asyncio, on the loop that made the engine; blocking, on a runtime thread.
        main_thread = threading.get_ident()
        for thread, loop in sink.calls:
            if name == "async":
                assert (thread, loop) == (main_thread, asyncio.get_running_loop())
            else:
                assert thread != main_thread and (loop is None) == (kind == "plain")

        # Nothing new: nothing handed again.
        again = await call(engine, "run_once", mailbox.id)
        assert again.error_code is None and len(mine(sink.handed, prefix)) == 20

        # (d) Progress of both cycles, in order: a start, then a finished value per cycle.
        await eventually(lambda: sum(p.finished for p in progress.events) >= 2, what="two finished progress values")
        subscription.cancel()
        first = progress.events[: next(i for i, p in enumerate(progress.events) if p.finished) + 1]
        assert all(isinstance(p, mailsync.SyncProgress) and p.mailbox_id == mailbox.id for p in first)
        assert len(first) >= 2 and not first[0].finished
        running, finished = first[:-1], first[-1]
        done = [p.messages_done for p in running]
        assert done == sorted(done) and running[-1].messages_done == running[-1].messages_total
        assert running[-1].bytes_done == running[-1].bytes_total == report.bytes
        # The finished value counts what the report counts (not mail older than the mailbox's start).
        assert finished.messages_done == finished.messages_total >= 20 and finished.bytes_done == report.bytes

        status = await call(engine, "status")
        [row] = [s for s in status if s.mailbox_id == mailbox.id]
        assert isinstance(row.incoming, mailsync.DirectionStatus.Enabled)
        assert row.cursor.delivered == report.delivered and row.cursor.imap.last_uid >= max(m.uid for m in got)
        await call(env.sync, "close")

    asyncio.run(main())


@pytest.mark.parametrize("name", FLAVOURS)
def test_reports_calls_back_with_the_report_of_each_cycle(stack, tmp_path, name):
    """`Engine.reports(callback)` hands the callback each cycle's
    CycleReport: the very report `run_once` returns (mailbox, counts), one
    per cycle, in order, until the subscription is cancelled."""

    async def main():
        env = await Env(stack, FLAVOURS[name], tmp_path / "m.db").open()
        address = {"async": "sync13@example.test", "blocking": "sync14@example.test"}[name]
        mailbox = await enabled(env, address)
        prefix = unique("engine-reports")
        deliver(address, 3, prefix)
        sink = PlainSink()
        engine = ENGINES[name](env.sync, sink, mailsync.default_engine_options())
        with pytest.raises(TypeError, match="CycleReport"):
            engine.reports(42)
        reports = Recorder(skip_snapshots=False)
        subscription = engine.reports(reports)
        assert isinstance(subscription, mailsync.Subscription)

        report = await call(engine, "run_once", mailbox.id)
        assert report.error_code is None, report.error_message
        [got] = await reports.wait(1)
        assert isinstance(got, mailsync.CycleReport)
        assert got == report  # every field: counts, bytes, duration, errors
        assert (got.mailbox_id, got.email) == (mailbox.id, address)
        assert got.delivered == len(sink.handed) >= 3 and len(mine(sink.handed, prefix)) == 3
        assert got.bytes == sum(len(m.raw) for m in sink.handed) > 0

        # One report per cycle, in order.
        again = await call(engine, "run_once", mailbox.id)
        events = await reports.wait(2)
        assert events[1] == again and events[1] is not events[0]

        # Cancelled: the next cycle is not reported.
        subscription.cancel()
        await call(engine, "run_once", mailbox.id)
        await asyncio.sleep(0.5)
        assert len(reports.events) == 2
        await call(env.sync, "close")

    asyncio.run(main())


class Returns:
    """A sink answer instead of the outcomes."""

    def __init__(self, value):
        self.value = value


@pytest.mark.parametrize("name", FLAVOURS)
def test_b_a_failing_sink_fails_the_cycle_and_the_batch_comes_again(stack, tmp_path, name):
    """The sink raises at message 7 (batches of 5): the cycle reports
    sink_failed with the exception, the cursor stays after the batches the
    sink answered, and the next run hands 7 again."""

    async def main():
        env = await Env(stack, FLAVOURS[name], tmp_path / "m.db").open()
        address = {"async": "sync15@example.test", "blocking": "sync16@example.test"}[name]
        mailbox = await enabled(env, address)
        prefix = unique("engine-b")
        deliver(address, 20, prefix)

        class Flaky(Store):
            failure = None  # at message 7: an exception to raise, or Returns(answer)

            def __init__(self):
                super().__init__()
                self.runs = []

            def answer(self, messages):
                self.where()
                self.runs[-1].extend(messages)
                for m in messages:
                    self.handed.append(m)
                    if m.subject == f"{prefix} 7/20" and self.failure is not None:
                        if isinstance(self.failure, Returns):
                            return self.failure.value
                        raise self.failure
                    self.by_key[m.key] = m
                self.acknowledged += len(messages)
                return ["stored"] * len(messages)

        if name == "async":
            class Sink(Flaky):
                async def deliver(self, messages):
                    await asyncio.sleep(0)
                    return self.answer(messages)
        else:
            class Sink(Flaky):
                def deliver(self, messages):
                    return self.answer(messages)

        sink = Sink()
        options = mailsync.default_engine_options()
        options.batch_messages = 5
        engine = ENGINES[name](env.sync, sink, options)

        async def run(failure):
            sink.failure = failure
            sink.runs.append([])
            before = sink.acknowledged
            report = await call(engine, "run_once", mailbox.id)
            assert report.delivered == sink.acknowledged - before
            return report, sorted(index(m) for m in mine(sink.runs[-1], prefix))

        report, handed = await run(ValueError("boom at 7"))
        assert report.error_code == "sink_failed"
        assert "the sink failed" in report.error_message and "ValueError: boom at 7" in report.error_message
        assert handed == list(range(1, 11))  # 1-5 answered; 6-10 failed (7 raised)

        # A mailsync exception keeps its code; wrong answers fail the cycle too.
        report, handed = await run(mailsync.StoreError("disk full"))
        assert report.error_code == "sink_failed" and "StoreError: disk full [store]" in report.error_message
        assert handed == list(range(6, 11)) and report.delivered == 0
        report, handed = await run(Returns(None))
        assert report.error_code == "sink_failed" and "TypeError" in report.error_message, report.error_message
        assert handed == list(range(6, 11))
        report, handed = await run(Returns(["stored"]))
        assert report.error_code == "sink_failed", report.error_message
        assert "returned 1 outcomes for 5 messages" in report.error_message
        report, handed = await run(Returns(["stored", "kept", "stored", "stored", "stored"]))
        assert report.error_code == "sink_failed" and "ValueError" in report.error_message
        assert "'kept' is not a DeliveryOutcome" in report.error_message

        # A sink failure does not count against the mailbox.
        state = await env.dir("state", mailbox.id)
        assert isinstance(state.incoming.status, mailsync.DirectionStatus.Enabled)

        report, handed = await run(None)
        assert report.error_code is None, report.error_message
        assert handed == list(range(6, 21))  # 7 comes again; 1-5 do not
        # Stored by key, the host has each message once.
        assert sorted(index(m) for m in mine(sink.by_key.values(), prefix)) == list(range(1, 21))
        await call(env.sync, "close")

    asyncio.run(main())


def test_c_replies_to_tracked_email_asks_the_sinks_tracked(stack, tmp_path):
    """The filter asks `tracked(mailbox_id, message_ids)`; only replies to
    what it recognises are downloaded. A sink without `tracked` tracks
    nothing (the Rust default)."""

    async def main():
        env = await Env(stack, mailsync.MailSync, tmp_path / "m.db").open()
        address, other = "sync17@example.test", "sync18@example.test"
        mailbox = await enabled(env, address, incoming_filter="replies_to_tracked_email")
        plain = await enabled(env, other, incoming_filter="replies_to_tracked_email")
        prefix = unique("engine-c")
        ours, theirs = f"{uuid.uuid4().hex}@crm.example.test", f"{uuid.uuid4().hex}@elsewhere.example.test"
        deliver(address, 3, prefix + "-tracked", "--in-reply-to", ours)
        deliver(address, 2, prefix + "-references", "--references", f"{theirs} {ours}")
        deliver(address, 2, prefix + "-untracked", "--in-reply-to", theirs)
        deliver(address, 2, prefix + "-new")
        deliver(other, 2, prefix + "-other", "--in-reply-to", ours)

        class Crm(PlainSink):
            def __init__(self):
                super().__init__()
                self.asked = []

            def tracked(self, mailbox_id, message_ids):
                self.asked.append((mailbox_id, list(message_ids)))
                return [i == ours for i in message_ids]

        crm = Crm()
        engine = mailsync.Engine(env.sync, crm, mailsync.default_engine_options())
        report = await engine.run_once(mailbox.id)
        assert report.error_code is None, report.error_message
        assert sorted(m.subject for m in mine(crm.handed, prefix + "-tracked")) == [f"{prefix}-tracked {i}/3" for i in (1, 2, 3)]
        assert len(mine(crm.handed, prefix + "-references")) == 2
        assert not mine(crm.handed, prefix + "-untracked") and not mine(crm.handed, prefix + "-new")
        assert report.filtered >= 4 and report.delivered == len(crm.handed)
        assert crm.asked and all(m == mailbox.id for m, _ in crm.asked)
        asked = {i for _, ids in crm.asked for i in ids}
        assert {ours, theirs} <= asked  # ids without angle brackets

        # No `tracked` method: the trait's default (tracks nothing).
        bare = PlainSink()
        report = await mailsync.Engine(env.sync, bare, mailsync.default_engine_options()).run_once(plain.id)
        assert report.error_code is None and not mine(bare.handed, prefix) and report.filtered >= 2

        # `tracked` that raises fails the cycle like `deliver`.
        class Broken(PlainSink):
            def tracked(self, mailbox_id, message_ids):
                raise KeyError("crm down")

        deliver(address, 1, prefix + "-late", "--in-reply-to", ours)
        report = await mailsync.Engine(env.sync, Broken(), mailsync.default_engine_options()).run_once(mailbox.id)
        assert report.error_code == "sink_failed" and "KeyError: 'crm down'" in report.error_message
        await env.sync.close()

    asyncio.run(main())


def test_from_known_records_asks_known_senders_as_a_coroutine_in_the_blocking_flavour(stack, tmp_path):
    async def main():
        env = await Env(stack, mailsync.blocking.MailSync, tmp_path / "m.db").open()
        address = "sync19@example.test"
        mailbox = await enabled(env, address, incoming_filter="from_known_records")
        prefix = unique("engine-known")
        deliver(address, 2, prefix + "-known", "--from", "Known Contact <Known.Contact@CRM.example.test>")
        deliver(address, 2, prefix + "-stranger", "--from", "stranger@outside.example")

        class Crm(PlainSink):
            asked = []

            async def known_senders(self, mailbox_id, addresses):
                await asyncio.sleep(0)
                self.asked.append((mailbox_id, list(addresses)))
                return [a == "known.contact@crm.example.test" for a in addresses]

        crm = Crm()
        engine = mailsync.blocking.Engine(env.sync, crm, mailsync.default_engine_options())
        report = await asyncio.to_thread(engine.run_once, mailbox.id)  # the blocking flavour, off the loop
        assert report.error_code is None, report.error_message
        assert len(mine(crm.handed, prefix + "-known")) == 2 and not mine(crm.handed, prefix + "-stranger")
        assert crm.asked and {a for _, ids in crm.asked for a in ids} >= {"known.contact@crm.example.test", "stranger@outside.example"}
        env.sync.close()

    asyncio.run(main())


@pytest.mark.parametrize("name", FLAVOURS)
def test_start_runs_until_stopped_garbage_collected_or_closed(stack, tmp_path, name):
    """With no postponement the engine cycles continuously; each cycle writes
    the cursor. Stopping, dropping the handle and closing the MailSync each
    stop it: the cursor's version stops moving (seen from a second store)."""

    async def main():
        env = await Env(stack, FLAVOURS[name], tmp_path / "m.db").open()
        profile = env.imap
        processing = profile.processing
        processing.min_polling_interval_minutes = 0
        profile.processing = processing
        await env.dir("update_profile", profile)
        address = {"async": "sync20@example.test", "blocking": "carol@example.test"}[name]
        mailbox = await enabled(env, address)
        observer = await mailsync.MailSync.open(StoreLocation.sqlite(env.db_path), env.options)
        watch = mailsync.Engine(observer, PlainSink(), mailsync.default_engine_options())

        async def version():
            [row] = [s for s in await watch.status() if s.mailbox_id == mailbox.id]
            return row.cursor.version if row.cursor else 0

        async def cycling():
            start = await version()
            deadline = time.monotonic() + 15
            while await version() < start + 2:
                assert time.monotonic() < deadline, "the engine does not cycle"
                await asyncio.sleep(0.05)

        async def still():
            await asyncio.sleep(0.5)  # a cycle in flight may still commit
            settled = await version()
            await asyncio.sleep(1.0)
            assert await version() == settled, "the engine still cycles"

        options = mailsync.default_engine_options()
        options.postpone_secs = 0
        sink = SINKS["plain"]()
        engine = ENGINES[name](env.sync, sink, options)
        prefix = unique("engine-start")

        handle = engine.start(1)
        assert isinstance(handle, mailsync.EngineHandle if name == "async" else mailsync.blocking.EngineHandle)
        deliver(address, 3, prefix)
        await eventually(lambda: len(mine(sink.handed, prefix)) == 3, what="the started engine to deliver")
        await cycling()
        await call(handle, "stop")
        await still()
        await call(handle, "stop")  # idempotent

        handle = engine.start(1)
        await cycling()
        del handle
        gc.collect()
        await still()

        # Closing the MailSync ends the engine's task: nothing holds the
        # engine, and so the sink, any more (the handle is kept).
        assert len(mine(sink.handed, prefix)) == 3
        handle = engine.start(1)
        await cycling()
        await call(env.sync, "close")
        await still()
        gone = weakref.ref(sink)
        del engine, sink
        deadline = time.monotonic() + 5
        while gone() is not None:
            assert time.monotonic() < deadline, "the closed engine still holds the sink"
            gc.collect()
            mailsync.default_engine_options()  # pyo3 releases references dropped off the GIL
            await asyncio.sleep(0.05)
        assert handle is not None
        await observer.close()

    asyncio.run(main())


def test_e_engine_options_are_range_checked_and_validated():
    options = mailsync.default_engine_options()
    assert isinstance(options, mailsync.EngineOptions)
    assert (options.postpone_secs, options.workers, options.batch_messages, options.sink_timeout_secs) == (300, 8, 200, 300)
    for field, value in [("workers", -1), ("batch_bytes", 2**32), ("postpone_secs", 2**70)]:
        with pytest.raises(mailsync.ValidationError) as e:
            setattr(options, field, value)
        assert (e.value.code, e.value.field) == ("validation", field)
    fields = {name: getattr(options, name) for name in (
        "postpone_secs", "connections_per_account", "workers", "batch_messages", "batch_bytes",
        "max_message_bytes", "messages_per_cycle", "min_throughput_bytes_per_sec", "sink_timeout_secs", "lease_secs",
        "sends_per_cycle", "allow_partial_send", "unknown_after_crash")}
    assert mailsync.EngineOptions(**fields) == options
    with pytest.raises(mailsync.ValidationError) as e:
        mailsync.EngineOptions(**{**fields, "lease_secs": -5})
    assert e.value.field == "lease_secs"
    with pytest.raises(TypeError):
        options.workers = "8"
    assert "EngineOptions {" in repr(options)

    async def main():
        sync = await mailsync.MailSync.open(StoreLocation.memory(), mailsync.default_options())
        bad = mailsync.default_engine_options()
        bad.workers = 0  # in range for the type, refused by the rules
        with pytest.raises(mailsync.ValidationError) as e:
            mailsync.Engine(sync, PlainSink(), bad)
        assert e.value.field == "workers"
        with pytest.raises(TypeError, match="deliver"):
            mailsync.Engine(sync, object(), options)
        with pytest.raises(TypeError, match="tracked"):
            mailsync.Engine(sync, type("S", (PlainSink,), {"tracked": 5})(), options)
        with pytest.raises(TypeError):
            mailsync.blocking.Engine(sync, PlainSink(), options)  # the other flavour's MailSync
        engine = mailsync.Engine(sync, PlainSink(), options)
        assert "Engine {" in repr(engine) and engine.options == options
        with pytest.raises(TypeError):
            engine.progress(42)
        mailbox = await sync.directory.create_mailbox(mailsync.user_mailbox("nobody@example.test"))
        with pytest.raises(mailsync.NotEnabledError):
            await engine.run_once(mailbox.id)  # never tested: the cycle cannot start
        with pytest.raises(mailsync.NotFoundError):
            await engine.run_once("no-such-mailbox")
        assert await engine.run_due() == []
        await sync.close()

    asyncio.run(main())
    # The asyncio flavour binds the running loop: there is none here.
    sync = asyncio.run(open_store(mailsync.MailSync, StoreLocation.memory()))
    with pytest.raises(RuntimeError):
        mailsync.Engine(sync, PlainSink(), options)
    asyncio.run(call(sync, "close"))
