"""Shared fixtures and constants for the mailsync Python suite."""

import inspect

import pytest

ENV_URL = "https://contoso.crm.example.com"
REDIRECT = ENV_URL + "/_grid/cmds/dlg_gmailoauth.aspx"
CLIENT_ID = "1234-abc.apps.googleusercontent.com"
SECRET = "GOCSPX-s3cr3t-Do-Not-Leak-7f9a"


async def call(sync, name, *args, **kwargs):
    """Calls an operation on either flavour: awaits async results, passes blocking ones."""
    result = getattr(sync, name)(*args, **kwargs)
    if inspect.isawaitable(result):
        return await result
    return result


async def open_store(flavour, path):
    return await call(flavour, "open_sqlite", path)


@pytest.fixture
def db_path(tmp_path):
    return tmp_path / "mailsync.db"


# --- The local stack (tests/stack): OAuth provider, Dovecot, Postfix --------

import json
import os
import pathlib
import subprocess

ROOT = pathlib.Path(__file__).resolve().parents[2]
STACK = ROOT / "tests" / "stack"


@pytest.fixture(scope="session")
def stack():
    """stack.json of the running local stack; `up` is idempotent (cheap when
    already running) and never stopped here."""
    subprocess.run([str(STACK / "up")], check=True, stdout=subprocess.DEVNULL)
    state_dir = pathlib.Path(os.environ.get("MAILSYNC_STACK_DIR", STACK / "run"))
    return json.loads((state_dir / "stack.json").read_text())


def stack_password(stack, email):
    return next(a["password"] for a in stack["accounts"] if a["email"] == email)


def walk_consent(stack, url, email, *flags):
    """Runs the stack's consent helper; returns the redirect URL it prints."""
    out = subprocess.run(
        [str(STACK / "bin" / "consent"), url, "--email", email, "--password", stack_password(stack, email), *flags],
        check=True,
        capture_output=True,
        text=True,
    )
    return out.stdout.strip().splitlines()[-1]


def revoke_token(token):
    subprocess.run([str(STACK / "bin" / "revoke"), "--", token], check=True, capture_output=True, text=True)
