#!/usr/bin/env python3
"""Runs examples/python/gmail_sync.py against the local stack as a user would (a subprocess,
its exit status and output), with stack_browser.py as the browser:

1. consent denied: exit 1, `error: consent_denied` and a next action on stderr;
2. consent allowed: connected, Test & Enable, the mail delivered before is in the SQLite file;
3. a second run: nothing new, the same rows (keyed);
4. an account with IMAP disabled: exit 1, `error: protocol_disabled` from Test & Enable.

Needs `mailsync` importable (scripts/examples-test builds it into a venv) and the stack up
(its state dir: $MAILSYNC_STACK_DIR or tests/stack/run).
Prints "N passed, N failed"; exits non-zero when a case fails.
Account: $PY_EXAMPLE_ACCOUNT (default sync16@example.test)."""
import os, pathlib, sqlite3, subprocess, sys, tempfile, time, traceback, uuid
from datetime import datetime, timedelta, timezone

here = pathlib.Path(__file__).resolve().parent
root = here.parents[2]
script = here.parent / "gmail_sync.py"
stack_json = pathlib.Path(os.environ.get("MAILSYNC_STACK_DIR") or root / "tests/stack/run") / "stack.json"
account = os.environ.get("PY_EXAMPLE_ACCOUNT", "sync16@example.test")
work = pathlib.Path(tempfile.mkdtemp(prefix="py-example-"))
since = (datetime.now(timezone.utc) - timedelta(seconds=2)).isoformat()
prefix = f"py-example-{uuid.uuid4().hex[:10]}"


def run(email, deny=False, db="mailsync.db", out="mail.sqlite"):
    env = dict(os.environ, BROWSER=f"{sys.executable} {here / 'stack_browser.py'} %s",
               STACK_BROWSER_EMAIL=email, STACK_BROWSER_DENY="1" if deny else "0")
    p = subprocess.run([sys.executable, str(script), email, "--stack", str(stack_json), "--port", "0",
                        "--db", str(work / db), "--out", str(work / out), "--since", since,
                        "--consent-timeout", "60"],
                       env=env, capture_output=True, text=True, timeout=180)
    print(f"  $ gmail_sync.py {email}{' (deny)' if deny else ''} -> exit {p.returncode}")
    for line in (p.stdout + p.stderr).strip().splitlines():
        print(f"    | {line}")
    return p


def rows():
    with sqlite3.connect(work / "mail.sqlite") as db:
        return db.execute("select subject, message_id, key from messages where subject like ?",
                          (prefix + " %",)).fetchall()


def test_denied():
    p = run(account, deny=True)
    assert p.returncode == 1, p.returncode
    assert "error: consent_denied:" in p.stderr, p.stderr
    assert "next: " in p.stderr


def test_allowed_syncs_the_mail():
    ids = subprocess.run([str(root / "tests/stack/bin/deliver"), account, "--count", "3",
                          "--subject-prefix", prefix], check=True, capture_output=True, text=True).stdout.split()
    p = run(account)
    assert p.returncode == 0, p.stderr
    assert f"Connected as {account}" in p.stdout, p.stdout
    assert "Test & Enable incoming IMAP" in p.stdout and "authenticate:ok" in p.stdout, p.stdout
    assert "Synced " in p.stdout, p.stdout
    got = rows()
    assert sorted(r[1] for r in got) == sorted(i.strip("<>") for i in ids), (got, ids)
    assert all(r[2] for r in got)


def test_second_run_adds_nothing():
    before = rows()
    p = run(account)
    assert p.returncode == 0, p.stderr
    assert "Connected as" not in p.stdout  # the grant is kept in the store
    assert "(0 new rows)" in p.stdout, p.stdout
    assert rows() == before


def test_imap_disabled_exits_with_its_code():
    p = run("dave@example.test", db="dave.db", out="dave.sqlite")
    assert p.returncode == 1, p.returncode
    assert "error: protocol_disabled:" in p.stderr, p.stderr


passed = failed = 0
started = time.monotonic()
for name, fn in list(globals().items()):
    if name.startswith("test_") and callable(fn):
        print(f"{name}")
        try:
            fn()
            passed += 1
            print(f"ok {name}")
        except Exception:
            failed += 1
            print(f"FAILED {name}\n{traceback.format_exc()}")
print(f"python example: {time.monotonic() - started:.1f} s")
print(f"{passed} passed, {failed} failed")
sys.exit(1 if failed else 0)
