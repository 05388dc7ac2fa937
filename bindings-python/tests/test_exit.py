"""The interpreter exits cleanly after using mailsync.

Regression test for a crash at exit (SIGSEGV, SIGABRT or "Fatal Python
error: PyGILState_Release ... finalizing"): a tokio thread completed an
asyncio future (pyo3-async-runtimes' `future_into_py`) while the main thread
was already in `Py_FinalizeEx`. The crash needs a narrow race, so each
script runs many times, in parallel, half of the runs in pairs on one shared
database. A run fails on any non-zero exit status, any signal, a hang, or
anything written to stderr; the failures' stderr is printed.
"""

import os
import shutil
import signal
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor

import mailsync
from mailsync.blocking import MailSync

SHUTDOWN_MESSAGE = (
    "mailsync cannot start an operation: the interpreter is shutting down "
    "(mailsync's runtime stopped at exit)"
)
PARALLEL = 8
RUN_TIMEOUT_S = 120

SCRIPTS = {
    # The reported repro: asyncio API, one call, close(), exit.
    "async": """
        import asyncio, sys
        import mailsync

        async def main(path):
            sync = await mailsync.MailSync.open(mailsync.StoreLocation.sqlite(path), mailsync.default_options())
            await sync.directory.list_profiles()
            await sync.close()

        asyncio.run(main(sys.argv[1]))
    """,
    # Operations still running when the loop closes and the interpreter exits.
    "async_in_flight": """
        import asyncio, sys
        import mailsync

        async def main(path):
            sync = await mailsync.MailSync.open(mailsync.StoreLocation.sqlite(path), mailsync.default_options())
            await sync.directory.list_profiles()
            sync.directory.list_profiles()  # never awaited
            sync.directory.list_mailboxes(None)  # never awaited

        asyncio.run(main(sys.argv[1]))
    """,
    # A subscription still delivering events (to a coroutine callback on the
    # loop, and to a plain one on a runtime thread) when the interpreter exits.
    "subscribed": """
        import asyncio, sys
        import mailsync
        from mailsync.blocking import MailSync

        blocking = MailSync.open(mailsync.StoreLocation.sqlite(sys.argv[1] + ".b"), mailsync.default_options())
        blocking.subscribe(None, lambda event: None)

        async def main(path):
            sync = await mailsync.MailSync.open(mailsync.StoreLocation.sqlite(path), mailsync.default_options())
            async def callback(event):
                await asyncio.sleep(0)
            await sync.subscribe(None, callback)
            app = mailsync.app_for_environment(mailsync.google_app("id", "secret"), "https://crm.example.com", None)
            profile = mailsync.gmail_profile("Exit", app)
            profile.default_for_new_mailboxes = True
            await sync.directory.create_profile(profile)
            for i in range(3):
                box = await sync.directory.create_mailbox(mailsync.user_mailbox(f"u{i}@example.com"))
                blocking.directory.create_mailbox(mailsync.user_mailbox(f"u{i}@example.com"))
                sync.checks.test_and_enable(box.id, mailsync.TestOptions(False))  # never awaited

        asyncio.run(main(sys.argv[1]))
    """,
    # A loop closed (without cancelling its tasks) while a coroutine callback
    # of a subscription is still running: the library's task for it is
    # abandoned silently, as asyncio.run abandons an event handed over while
    # it winds down.
    "loop_closed_under_callback": """
        import asyncio, gc, sys
        import mailsync

        async def main(path, started):
            sync = await mailsync.MailSync.open(mailsync.StoreLocation.sqlite(path), mailsync.default_options())
            app = mailsync.app_for_environment(mailsync.google_app("id", "secret"), "https://crm.example.com", None)
            profile = mailsync.gmail_profile("Exit", app)
            profile.default_for_new_mailboxes = True
            await sync.directory.create_profile(profile)
            await sync.directory.create_mailbox(mailsync.user_mailbox("u@example.com"))
            async def callback(event):
                started.set()
                await asyncio.Event().wait()  # never returns
            await sync.subscribe(None, callback)
            await started.wait()

        loop = asyncio.new_event_loop()
        loop.run_until_complete(main(sys.argv[1], asyncio.Event()))
        loop.close()
        del loop
        gc.collect()
        print("closed")
    """,
    "blocking": """
        import sys
        import mailsync
        from mailsync.blocking import MailSync

        sync = MailSync.open(mailsync.StoreLocation.sqlite(sys.argv[1]), mailsync.default_options())
        sync.directory.list_profiles()
        sync.close()
    """,
    # A daemon thread is inside (or between) blocking calls when the
    # interpreter exits.
    "blocking_daemon": """
        import sys, threading
        import mailsync
        from mailsync.blocking import MailSync

        sync = MailSync.open(mailsync.StoreLocation.sqlite(sys.argv[1]), mailsync.default_options())
        first_call_done = threading.Event()

        def work():
            while True:
                sync.directory.list_profiles()
                first_call_done.set()

        threading.Thread(target=work, daemon=True).start()
        first_call_done.wait()
    """,
}


def _template_store(tmp_path):
    """An initialized, closed store to copy: paired processes share a database
    that exists already (two processes creating one file at the same moment
    race in the core's migrations, which is not what this test is about)."""
    template = tmp_path / "template" / "mailsync.db"
    template.parent.mkdir()
    sync = MailSync.open(mailsync.StoreLocation.sqlite(str(template)), mailsync.default_options())
    sync.directory.list_profiles()
    sync.close()
    return template


def _copy_store(template, dest):
    for f in template.parent.iterdir():
        shutil.copy(f, dest.parent / f.name.replace(template.name, dest.name))


def _run_group(argvs):
    """Starts the processes of one group together and waits for all of them."""
    # Each run in its own process group, so that a hung run can be killed
    # with everything it forked (which would otherwise hold the pipes open).
    procs = [
        subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
        for argv in argvs
    ]
    results = []
    for argv, proc in zip(argvs, procs):
        try:
            out, err = proc.communicate(timeout=RUN_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
            err = b"(hung: killed after %d s)\n" % RUN_TIMEOUT_S + err
        results.append((argv, proc.returncode, err.decode(errors="replace"), out.decode(errors="replace")))
    return results


def _describe(returncode):
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exit status {returncode}"


def _run_many(tmp_path, script_name, runs, paired):
    """`runs` runs of a script; `paired` of them in pairs on one database."""
    script = tmp_path / f"{script_name}.py"
    script.write_text(textwrap.dedent(SCRIPTS[script_name]))
    template = _template_store(tmp_path)
    groups = []
    for i in range(paired // 2):
        db = tmp_path / f"shared{i}.db"
        _copy_store(template, db)
        groups.append([[sys.executable, str(script), str(db)]] * 2)
    for i in range(runs - paired):
        groups.append([[sys.executable, str(script), str(tmp_path / f"solo{i}.db")]])
    # Interleave pairs and solo runs so both kinds run side by side.
    pairs, solos = groups[: paired // 2], groups[paired // 2 :]
    order = [g for both in zip(pairs, solos) for g in both] + pairs[len(solos) :] + solos[len(pairs) :]

    with ThreadPoolExecutor(PARALLEL) as pool:
        results = [r for group in pool.map(_run_group, order) for r in group]
    assert len(results) == runs

    failures = [(argv, rc, err) for argv, rc, err, _ in results if rc != 0 or err]
    if failures:
        report = [f"{len(failures)} of {runs} runs of {script_name!r} did not exit cleanly:"]
        for argv, rc, err in failures[:10]:
            report.append(f"--- {os.path.basename(argv[-1])}: {_describe(rc)}\n{err[-3000:]}")
        raise AssertionError("\n".join(report))


def test_asyncio_scripts_exit_cleanly(tmp_path):
    _run_many(tmp_path, "async", runs=200, paired=100)


def test_operation_in_flight_at_exit(tmp_path):
    _run_many(tmp_path, "async_in_flight", runs=32, paired=16)


def test_active_subscriptions_at_exit(tmp_path):
    _run_many(tmp_path, "subscribed", runs=24, paired=0)


def test_a_loop_closed_under_a_running_callback_is_quiet(tmp_path):
    _run_many(tmp_path, "loop_closed_under_callback", runs=8, paired=0)


def test_blocking_scripts_exit_cleanly(tmp_path):
    _run_many(tmp_path, "blocking", runs=24, paired=12)


def test_daemon_thread_in_blocking_call_at_exit(tmp_path):
    _run_many(tmp_path, "blocking_daemon", runs=32, paired=16)


def test_calls_after_the_exit_hook_raise_instead_of_hanging(tmp_path):
    """An exit handler registered before mailsync was imported runs after
    mailsync's own: its calls raise RuntimeError at once (they must neither
    hang the exit nor reach a stopped runtime)."""
    script = tmp_path / "late.py"
    script.write_text(textwrap.dedent("""
        import asyncio, atexit, sys

        def late():
            from mailsync.blocking import MailSync
            import mailsync
            try:
                sync.directory.list_profiles()
            except RuntimeError as e:
                print("blocking refused:", e)
            async def main():
                await mailsync.MailSync.open(mailsync.StoreLocation.sqlite(sys.argv[1]), mailsync.default_options())
            try:
                asyncio.run(main())
            except RuntimeError as e:
                print("async refused:", e)

        atexit.register(late)           # before the import: runs after mailsync's hook

        import mailsync
        from mailsync.blocking import MailSync
        sync = MailSync.open(mailsync.StoreLocation.sqlite(sys.argv[1]), mailsync.default_options())
        sync.directory.list_profiles()
    """))
    [(_, rc, err, out)] = _run_group([[sys.executable, str(script), str(tmp_path / "late.db")]])
    assert (rc, err) == (0, ""), f"{_describe(rc)}\n{err}"
    assert out.splitlines() == [
        "blocking refused: " + SHUTDOWN_MESSAGE,
        "async refused: " + SHUTDOWN_MESSAGE,
    ]


def test_forked_child_starts_its_own_runtime(tmp_path):
    """A child made by os.fork() after the parent used mailsync inherits the
    runtime's state but not its threads: it must start a runtime of its own
    (instead of hanging), and both processes must exit cleanly."""
    script = tmp_path / "fork.py"
    script.write_text(textwrap.dedent("""
        import asyncio, os, sys
        import mailsync
        from mailsync.blocking import MailSync

        def location():
            return mailsync.StoreLocation.sqlite(sys.argv[1])

        sync = MailSync.open(location(), mailsync.default_options())
        sync.directory.list_profiles()
        pid = os.fork()
        if pid == 0:
            MailSync.open(location(), mailsync.default_options()).directory.list_profiles()
            async def main():
                opened = await mailsync.MailSync.open(location(), mailsync.default_options())
                await opened.directory.list_profiles()
            asyncio.run(main())
            print("child ok")
            sys.exit(0)
        _, status = os.waitpid(pid, 0)
        print("child status", status)
        sync.close()
    """))
    argv = [sys.executable, "-W", "ignore::DeprecationWarning", str(script), str(tmp_path / "fork.db")]
    [(_, rc, err, out)] = _run_group([argv])
    assert (rc, err) == (0, ""), f"{_describe(rc)}\n{err}"
    assert out.splitlines() == ["child ok", "child status 0"]
