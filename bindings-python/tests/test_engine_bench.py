"""Opt-in benchmark (MAILSYNC_BENCH=1), in one process: an initial sync of
5,000 messages into a Python sink against the same sync into a sink written
in Rust (`mailsync._native._RustSinkForTest`, which keeps each message's
bytes by key). The Python sinks do the same: `kept[m.key] = m.raw`. It
measures what the binding's sink adapter costs; scripts/bench compares whole
processes.

It uses scripts/bench's bench set (5,000 messages of 2-20 KB in sync19's
INBOX; run scripts/bench once to deliver it). Each run is a new store syncing
the first 5,000 messages of that INBOX; runs alternate, the first is a
warm-up, and the fastest run of each kind is compared (the least disturbed
on a shared machine; medians are printed).

    MAILSYNC_BENCH=1 target/py-venv/bin/python -m pytest bindings-python/tests/test_engine_bench.py -s
"""

import asyncio
import os
import statistics
import time

import pytest

import mailsync
from mailsync._native import _RustSinkForTest

from conftest import Env, call
from test_engine import enabled

pytestmark = pytest.mark.skipif(os.environ.get("MAILSYNC_BENCH") != "1", reason="benchmark: set MAILSYNC_BENCH=1")

ACCOUNT = "sync19@example.test"  # scripts/bench's DEFAULT_USER
MESSAGES = 5000
ROUNDS = int(os.environ.get("MAILSYNC_BENCH_ROUNDS", "3"))
LIMIT = 1.10


class Plain:
    def __init__(self):
        self.kept, self.inside, self.calls = {}, 0.0, 0

    def deliver(self, messages):
        started = time.perf_counter()
        kept = self.kept
        for m in messages:
            kept[m.key] = m.raw
        self.inside += time.perf_counter() - started
        self.calls += 1
        return ["stored"] * len(messages)


class Coroutine(Plain):
    async def deliver(self, messages):
        return Plain.deliver(self, messages)


KINDS = {
    "rust": (mailsync.MailSync, _RustSinkForTest),
    "python": (mailsync.MailSync, Plain),
    "python-coroutine": (mailsync.MailSync, Coroutine),
    "python-blocking": (mailsync.blocking.MailSync, Plain),
}


async def one_run(stack, tmp_path, kind, n):
    flavour, make_sink = KINDS[kind]
    env = await Env(stack, flavour, tmp_path / f"{kind}-{n}.db").open()
    mailbox = await enabled(env, ACCOUNT, process_email_received_after=None)  # the whole INBOX
    options = mailsync.default_engine_options()
    options.messages_per_cycle = MESSAGES
    sink = make_sink()
    engine = (mailsync.Engine if flavour is mailsync.MailSync else mailsync.blocking.Engine)(env.sync, sink, options)
    started = time.perf_counter()
    report = await call(engine, "run_once", mailbox.id)
    took = time.perf_counter() - started
    assert report.error_code is None, report.error_message
    await call(env.sync, "close")
    return took, report, sink


def test_a_python_sink_is_within_ten_percent_of_the_rust_one(stack, tmp_path):
    async def main():
        took, report, _ = await one_run(stack, tmp_path, "rust", 0)  # warm-up
        if report.delivered < MESSAGES:
            pytest.skip(f"{ACCOUNT} holds {report.delivered} messages: run scripts/bench once for its bench set")
        times, inside = {kind: [] for kind in KINDS}, {kind: [] for kind in KINDS}
        for n in range(ROUNDS):
            order = list(KINDS) if n % 2 == 0 else list(reversed(KINDS))
            for kind in order:
                took, report, sink = await one_run(stack, tmp_path, kind, n + 2)
                assert report.delivered == MESSAGES, (kind, report.delivered)
                times[kind].append(took)
                if isinstance(sink, Plain):
                    inside[kind].append((sink.inside, sink.calls))
        medians = {kind: statistics.median(t) for kind, t in times.items()}
        best = {kind: min(t) for kind, t in times.items()}
        print(f"\n{MESSAGES} messages, {ROUNDS} rounds, {report.bytes / MESSAGES:.0f} bytes each on average")
        for kind, t in times.items():
            ratio = best[kind] / best["rust"]
            spent = f"; in deliver {statistics.median(i for i, _ in inside[kind]) * 1000:.1f} ms over {inside[kind][0][1]} calls" if inside[kind] else ""
            print(f"  {kind:17} best {best[kind]:.3f} s ({ratio:.3f}x rust), median {medians[kind]:.3f} s; runs {', '.join(f'{x:.3f}' for x in t)}{spent}")
        assert best["python"] <= LIMIT * best["rust"], times

    asyncio.run(main())
