#!/usr/bin/env python3
"""A stand-in browser for gmail_sync.py's tests: `BROWSER="python3 stack_browser.py %s"`.

Walks the local stack's real login and consent pages for URL (tests/stack/bin/consent, plain HTTP
with a cookie jar), then follows the provider's redirect to the script's loopback listener, as a
browser would. STACK_BROWSER_EMAIL: the account; STACK_BROWSER_DENY=1: press Deny."""
import json, os, pathlib, subprocess, sys, urllib.request

root = pathlib.Path(__file__).resolve().parents[3]
stack_dir = pathlib.Path(os.environ.get("MAILSYNC_STACK_DIR") or root / "tests/stack/run")
stack = json.loads((stack_dir / "stack.json").read_text())
email = os.environ["STACK_BROWSER_EMAIL"]
password = next(a["password"] for a in stack["accounts"] if a["email"] == email)
args = [str(root / "tests/stack/bin/consent"), sys.argv[1], "--email", email, "--password", password]
if os.environ.get("STACK_BROWSER_DENY") == "1":
    args.append("--deny")
redirect = subprocess.run(args, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
with urllib.request.urlopen(redirect, timeout=30) as r:  # the loopback listener
    r.read()
