"""Shared fixtures and helpers for the mailsync Python suite."""

import asyncio
import inspect
import json
import os
import pathlib
import subprocess
import threading

import pytest

import mailsync
from mailsync import Endpoint, IncomingEndpoint, StoreLocation

ENV_URL = "https://contoso.crm.example.com"
REDIRECT = ENV_URL + "/_grid/cmds/dlg_gmailoauth.aspx"
CLIENT_ID = "1234-abc.apps.googleusercontent.com"
SECRET = "GOCSPX-s3cr3t-Do-Not-Leak-7f9a"
FLAVOURS = {"async": mailsync.MailSync, "blocking": mailsync.blocking.MailSync}


async def call(obj, name, *args, **kwargs):
    """Calls an operation on either flavour: awaits async results, passes blocking ones."""
    result = getattr(obj, name)(*args, **kwargs)
    if inspect.isawaitable(result):
        return await result
    return result


async def open_store(flavour, location, options=None):
    return await call(flavour, "open", location, options or mailsync.default_options())


def app(client_id=CLIENT_ID, secret=SECRET):
    return mailsync.app_for_environment(mailsync.google_app(client_id, secret), ENV_URL, None)


def gmail(name, default=False, **fields):
    profile = mailsync.gmail_profile(name, app())
    profile.default_for_new_mailboxes = default
    for key, value in fields.items():
        setattr(profile, key, value)
    return profile


def user(email, profile_id=None):
    spec = mailsync.user_mailbox(email)
    spec.profile_id = profile_id
    return spec


class Recorder:
    """A subscription callback that records events; `wait(n)` (awaitable)
    returns once n events arrived (they are delivered asynchronously)."""

    def __init__(self, skip_snapshots=True):
        self.events = []
        self.skip_snapshots = skip_snapshots
        self.cond = threading.Condition()

    def __call__(self, event):
        if self.skip_snapshots and event.kind == "snapshot":
            return
        with self.cond:
            self.events.append(event)
            self.cond.notify_all()

    def kinds(self, *only):
        return [(e.kind, e.email) for e in self.events if not only or e.kind in only]

    def _wait(self, n, timeout):
        with self.cond:
            if not self.cond.wait_for(lambda: len(self.events) >= n, timeout):
                raise AssertionError(f"waited {timeout}s for {n} events, got {self.kinds()}")

    async def wait(self, n, timeout=10):
        await asyncio.to_thread(self._wait, n, timeout)
        return self.events


# --- The local stack (tests/stack): OAuth provider, Dovecot, Postfix --------

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


class Env:
    """One store on a temporary file, pointed at the stack, with an IMAP
    profile (default) and a POP3 profile, recording every event."""

    def __init__(self, stack, flavour, db_path, **options):
        self.stack, self.flavour, self.db_path = stack, flavour, db_path
        self.options = mailsync.default_options()
        self.options.google_issuer_override = stack["oauth"]["issuer"]
        self.options.extra_root_certs_pem = [pathlib.Path(stack["ca_cert"]).read_text()]
        for key, value in options.items():
            setattr(self.options, key, value)
        self.events = Recorder()

    async def open(self):
        s = self.stack
        self.sync = await open_store(self.flavour, StoreLocation.sqlite(self.db_path), self.options)
        self.subscription = await call(self.sync, "subscribe", None, self.events)
        app = mailsync.app_for_environment(
            mailsync.google_app(s["oauth"]["client_id"], s["oauth"]["client_secret"]), "http://localhost:8765", None
        )
        app = mailsync.app_with_test_users(app, [a["email"] for a in s["accounts"]])
        imap = mailsync.gmail_profile("Stack IMAP", app)
        imap.default_for_new_mailboxes = True
        imap.incoming = IncomingEndpoint("imap", Endpoint("127.0.0.1", s["imap"]["tls_port"], "tls"))
        imap.outgoing = Endpoint("127.0.0.1", s["smtp"]["starttls_port"], "start_tls")
        self.imap = await self.dir("create_profile", imap)
        pop3 = mailsync.profile_use_pop3(mailsync.gmail_profile("Stack POP3", app))
        pop3.incoming = IncomingEndpoint("pop3", Endpoint("127.0.0.1", s["pop3"]["tls_port"], "tls"))
        pop3.outgoing = Endpoint("127.0.0.1", s["smtp"]["tls_port"], "tls")
        self.pop3 = await self.dir("create_profile", pop3)
        return self

    async def dir(self, name, *args):
        return await call(self.sync.directory, name, *args)

    async def conn(self, name, *args):
        return await call(self.sync.connections, name, *args)

    async def check(self, mailbox_id):
        return await call(self.sync.checks, "test_and_enable", mailbox_id, mailsync.TestOptions(False))

    async def grant(self, mailbox_id):
        return (await self.dir("state", mailbox_id)).grant

    async def mailbox(self, email, profile=None, **fields):
        """A new mailbox; `fields` are set on its `MailboxSpec`."""
        spec = mailsync.user_mailbox(email)
        spec.profile_id = profile.id if profile is not None else None
        for key, value in fields.items():
            setattr(spec, key, value)
        return await self.dir("create_mailbox", spec)

    async def connected(self, email, profile=None, **fields):
        """A mailbox walked through connect -> consent -> complete."""
        mailbox = await self.mailbox(email, profile, **fields)
        request = await self.conn("connect", mailbox.id)
        status = await self.conn("complete", walk_consent(self.stack, request.url, email))
        return status.mailbox

    async def saw(self, *expected, kinds=None):
        """Waits until the events of these kinds are `expected` ((kind, email) pairs)."""
        kinds = kinds or {kind for kind, _ in expected}
        for _ in range(1000):
            if len(self.events.kinds(*kinds)) >= len(expected):
                break
            await asyncio.sleep(0.01)
        assert self.events.kinds(*kinds) == list(expected)


def revoke_token(token):
    subprocess.run([str(STACK / "bin" / "revoke"), "--", token], check=True, capture_output=True, text=True)
