"""Round 2 against the real local stack (tests/stack): the OAuth lifecycle
(connect -> consent pages -> complete_connect -> access_token ->
refresh_access_token -> disconnect),
host event callbacks, and Test & Enable over IMAP/POP3 + SMTP.

Every test opens its own SQLite file with its own profiles and mailboxes.
The consent pages are walked by tests/stack/bin/consent (no browser)."""

import asyncio
import json
import pathlib
import sys
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import pytest

import mailsync
from mailsync import Endpoint, MailboxSpec, OAuthApp, ServerProfile, Settings

from conftest import call, revoke_token, walk_consent

FLAVOURS = {"async": mailsync.MailSync, "blocking": mailsync.blocking.MailSync}


class Env:
    """One store on a temporary file, pointed at the stack, with an IMAP
    profile (default) and a POP3 profile, recording events."""

    def __init__(self, stack, flavour, db_path, **settings):
        self.stack = stack
        self.flavour = flavour
        self.db_path = db_path
        self.events = []
        self.settings = Settings(
            google_issuer_override=stack["oauth"]["issuer"],
            extra_root_certs_pem=[pathlib.Path(stack["ca_cert"]).read_text()],
            event_listener=self.events.append,
            **settings,
        )

    async def open(self):
        s = self.stack
        self.sync = await call(self.flavour, "open_sqlite_with", self.db_path, self.settings)
        app = (
            OAuthApp.google(s["oauth"]["client_id"], s["oauth"]["client_secret"])
            .for_environment("http://localhost:8765")
            .with_test_users([a["email"] for a in s["accounts"]])
        )
        self.imap = await self.op(
            "create_profile",
            ServerProfile.gmail("Stack IMAP", app, default_for_new_mailboxes=True)
            .with_incoming(Endpoint("127.0.0.1", s["imap"]["tls_port"], "tls"))
            .with_outgoing(Endpoint("127.0.0.1", s["smtp"]["starttls_port"], "start_tls")),
        )
        self.pop3 = await self.op(
            "create_profile",
            ServerProfile.gmail("Stack POP3", app)
            .use_pop3()
            .with_incoming(Endpoint("127.0.0.1", s["pop3"]["tls_port"], "tls"))
            .with_outgoing(Endpoint("127.0.0.1", s["smtp"]["tls_port"], "tls")),
        )
        return self

    async def op(self, name, *args):
        return await call(self.sync, name, *args)

    async def mailbox(self, email, profile=None):
        spec = MailboxSpec.user(email)
        if profile is not None:
            spec = spec.on_profile(profile.id)
        return await self.op("create_mailbox", spec)

    async def connected(self, email, profile=None):
        """A mailbox walked through connect -> consent -> complete_connect."""
        mailbox = await self.mailbox(email, profile)
        request = await self.op("connect", mailbox.id)
        redirect = walk_consent(self.stack, request.url, email)
        return await self.op("complete_connect", redirect)

    def kinds(self):
        return [(e.kind, e.email) for e in self.events]


def run(coro):
    return asyncio.run(coro)


def with_query(url, **changes):
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    query.update(changes)
    return urlunsplit(parts._replace(query=urlencode(query)))


# --- 1, 2, 3, 5: the lifecycle on both flavours (IMAP + SMTP STARTTLS) --------


@pytest.mark.parametrize("name", FLAVOURS)
def test_imap_lifecycle_connect_token_test_and_enable_disconnect(stack, tmp_path, name):
    async def main():
        env = await Env(stack, FLAVOURS[name], tmp_path / "m.db").open()
        email = "alice@example.test"
        mailbox = await env.mailbox(email)
        assert mailbox.connection.state == "not_connected"

        request = await env.op("connect", mailbox.id)
        assert isinstance(request, mailsync.ConsentRequest)
        assert request.url.startswith(stack["oauth"]["authorization_endpoint"])
        assert request.mailbox_id == mailbox.id
        assert request.expires_at.tzinfo is not None
        waiting = await env.op("get_mailbox", mailbox.id)
        assert waiting.connection.state == "awaiting_consent"
        assert waiting.connection.expires_at == request.expires_at

        redirect = walk_consent(stack, request.url, email)
        assert redirect.startswith("http://localhost:8765/_grid/cmds/dlg_gmailoauth.aspx?")
        connected = await env.op("complete_connect", redirect)
        assert isinstance(connected, mailsync.Mailbox)
        assert connected.connection.state == "connected"
        assert connected.connection.account == email
        # The listener ran before complete_connect returned.
        assert env.kinds() == [("connected", email)]
        event = env.events[0]
        assert isinstance(event, mailsync.MailboxEvent)
        assert event.mailbox_id == mailbox.id and event.code is None and event.message
        assert json.loads(event.to_json())["kind"] == "connected"

        token = await env.op("access_token", mailbox.id)
        raw = token.expose()
        assert isinstance(raw, str) and len(raw) > 10
        assert token.account == email
        assert raw not in repr(token) and raw not in str(token) and "redacted" in repr(token)
        info = await env.op("token_info", mailbox.id)
        assert info.account == email and info.has_refresh_token
        assert "https://mail.google.com/" in info.scopes
        assert raw not in repr(info)

        report = await env.op("test_and_enable", mailbox.id)
        assert isinstance(report, mailsync.TestReport)
        assert report.is_success() and report.outcome == "success", report.to_json()
        assert report.first_failure() is None
        assert report.incoming.protocol == "IMAP" and report.incoming.direction == "incoming"
        assert report.incoming.server == f"127.0.0.1:{stack['imap']['tls_port']}"
        steps = [s.step for s in report.incoming.steps]
        assert steps[0] == "credentials" and "tls" in steps and "authenticate" in steps
        assert "select_inbox" in steps
        assert all(s.ok for s in report.incoming.steps)
        assert report.outgoing.protocol == "SMTP" and report.outgoing.success
        assert "ehlo" in [s.step for s in report.outgoing.steps]
        assert report.incoming_enabled and report.outgoing_enabled
        assert raw not in report.to_json()
        stored = await env.op("get_mailbox", mailbox.id)
        assert stored.incoming_enabled and stored.outgoing_enabled
        assert stored.incoming_test.status == "success" and stored.outgoing_test.status == "success"
        profile = await env.op("get_profile", env.imap.id)
        assert profile.last_test.outcome == "success"

        gone = await env.op("disconnect", mailbox.id)
        assert gone.connection.state == "not_connected"
        assert env.kinds() == [("connected", email), ("disconnected", email)]
        with pytest.raises(mailsync.NotConnectedError) as e:
            await env.op("access_token", mailbox.id)
        assert e.value.code == "not_connected"
        assert await env.op("token_info", mailbox.id) is None
        # Idempotent.
        again = await env.op("disconnect", mailbox.id)
        assert again.connection.state == "not_connected"

    run(main())


# --- Round 3: refresh_access_token (a server rejected the token) -------------


@pytest.mark.parametrize("name", FLAVOURS)
def test_refresh_access_token_replaces_a_rejected_token_once(stack, tmp_path, name):
    async def main():
        env = await Env(stack, FLAVOURS[name], tmp_path / "m.db").open()
        email = "alice@example.test"
        alice = await env.connected(email)
        t1 = await env.op("access_token", alice.id)
        before = await env.op("token_info", alice.id)
        assert env.kinds() == [("connected", email)]

        t2 = await env.op("refresh_access_token", alice.id, t1)
        assert isinstance(t2, mailsync.AccessToken) and t2.account == email
        assert t2.expose() != t1.expose()
        assert t2.expose() not in repr(t2) and "redacted" in repr(t2)
        # The listener ran before refresh_access_token returned.
        assert env.kinds() == [("connected", email), ("refreshed", email)]
        assert env.events[-1].mailbox_id == alice.id and env.events[-1].code is None
        after = await env.op("token_info", alice.id)
        assert after.version > before.version

        # t1 was already replaced: the stored t2 comes back, no second refresh.
        t3 = await env.op("refresh_access_token", alice.id, t1)
        assert t3.expose() == t2.expose()
        assert env.kinds() == [("connected", email), ("refreshed", email)]
        assert (await env.op("token_info", alice.id)).version == after.version
        assert (await env.op("access_token", alice.id)).expose() == t2.expose()

        # Rejecting the current token refreshes again.
        t4 = await env.op("refresh_access_token", alice.id, t2)
        assert t4.expose() not in (t1.expose(), t2.expose())
        assert env.kinds()[-1] == ("refreshed", email) and len(env.events) == 3

        # Garbage and unknown ids (no provider request), wrong types.
        with pytest.raises(mailsync.ValidationError) as e:
            await env.op("refresh_access_token", "not-an-id", t4)
        assert e.value.code == "validation" and e.value.field == "mailbox_id"
        with pytest.raises(mailsync.NotFoundError) as e:
            await env.op("refresh_access_token", "00000000-0000-4000-8000-000000000000", t4)
        assert e.value.code == "not_found"
        with pytest.raises(TypeError):
            await env.op("refresh_access_token", alice.id, t4.expose())
        with pytest.raises(TypeError):
            await env.op("refresh_access_token", 42, t4)
        # A mailbox without tokens.
        carol = await env.mailbox("carol@example.test")
        with pytest.raises(mailsync.NotConnectedError) as e:
            await env.op("refresh_access_token", carol.id, t4)
        assert e.value.code == "not_connected"
        assert len(env.events) == 3
        await env.op("close")

    run(main())


def test_refresh_access_token_after_revocation_raises_token_revoked(stack, tmp_path):
    async def main():
        env = await Env(stack, mailsync.MailSync, tmp_path / "m.db").open()
        email = "bob@example.test"
        bob = await env.connected(email)
        token = await env.op("access_token", bob.id)
        revoke_token(token.expose())  # the provider revokes the whole grant
        with pytest.raises(mailsync.TokenRevokedError) as e:
            await env.op("refresh_access_token", bob.id, token)
        assert e.value.code == "token_revoked" and not e.value.transient and e.value.next_action
        assert token.expose() not in str(e.value)
        assert env.kinds() == [("connected", email), ("needs_reconsent", email)]
        assert env.events[-1].code == "token_revoked"

    run(main())


# --- 3: POP3 + SMTP implicit TLS, and test_all_mailboxes -----------------------


def test_pop3_smtp_tls_test_and_enable_and_test_all_mailboxes(stack, tmp_path):
    async def main():
        env = await Env(stack, mailsync.MailSync, tmp_path / "m.db").open()
        bob = await env.connected("bob@example.test", env.pop3)
        assert bob.profile_id == env.pop3.id

        report = await env.op("test_and_enable_with", bob.id, mailsync.TestOptions())
        assert report.is_success(), report.to_json()
        assert report.incoming.protocol == "POP3"
        assert report.incoming.server == f"127.0.0.1:{stack['pop3']['tls_port']}"
        assert "stat" in [s.step for s in report.incoming.steps]
        assert report.outgoing.server == f"127.0.0.1:{stack['smtp']['tls_port']}"
        assert report.incoming_enabled and report.outgoing_enabled

        reports = await env.op("test_all_mailboxes", env.pop3.id)
        assert [r.email for r in reports] == ["bob@example.test"]
        assert reports[0].is_success()

    run(main())


# --- 4: failures with their exception types / diagnosis codes -----------------


def test_consent_denied_raises_consent_denied_error(stack, tmp_path):
    async def main():
        env = await Env(stack, mailsync.MailSync, tmp_path / "m.db").open()
        mailbox = await env.mailbox("carol@example.test")
        request = await env.op("connect", mailbox.id)
        redirect = walk_consent(stack, request.url, "carol@example.test", "--deny")
        assert "error=access_denied" in redirect
        with pytest.raises(mailsync.ConsentDeniedError) as e:
            await env.op("complete_connect", redirect)
        assert e.value.code == "consent_denied" and not e.value.transient
        assert (await env.op("get_mailbox", mailbox.id)).connection.state != "connected"
        assert env.kinds() == []
        with pytest.raises(mailsync.NotConnectedError):
            await env.op("access_token", mailbox.id)

    run(main())


def test_tampered_replayed_or_expired_state_raises_state_invalid_error(stack, tmp_path):
    async def main():
        env = await Env(stack, mailsync.MailSync, tmp_path / "m.db").open()
        mailbox = await env.mailbox("alice@example.test")
        request = await env.op("connect", mailbox.id)
        redirect = walk_consent(stack, request.url, "alice@example.test")
        state = dict(parse_qsl(urlsplit(redirect).query))["state"]

        for bad in (with_query(redirect, state=state[:-2] + "xx"), with_query(redirect, state=""), "garbage"):
            with pytest.raises(mailsync.StateInvalidError) as e:
                await env.op("complete_connect", bad)
            assert e.value.code == "state_invalid"
        # The genuine redirect still works once (query only is accepted too)...
        done = await env.op("complete_connect", urlsplit(redirect).query)
        assert done.connection.state == "connected"
        # ...and never twice.
        with pytest.raises(mailsync.StateInvalidError):
            await env.op("complete_connect", redirect)

    run(main())


def test_consent_ttl_setting_reaches_the_core(stack, tmp_path):
    async def main():
        from datetime import timedelta

        env = await Env(stack, mailsync.MailSync, tmp_path / "m.db", consent_ttl=timedelta(0)).open()
        assert (await call(env.sync, "settings")).consent_ttl == timedelta(0)
        mailbox = await env.mailbox("alice@example.test")
        request = await env.op("connect", mailbox.id)
        redirect = walk_consent(stack, request.url, "alice@example.test")
        with pytest.raises(mailsync.StateInvalidError):
            await env.op("complete_connect", redirect)

    run(main())


def test_protocol_disabled_account_is_diagnosed_at_authenticate(stack, tmp_path):
    async def main():
        env = await Env(stack, mailsync.MailSync, tmp_path / "m.db").open()
        dave = await env.connected("dave@example.test")
        report = await env.op("test_and_enable", dave.id)
        assert not report.is_success() and report.outcome == "failure"
        diagnosis = report.incoming.diagnosis
        assert diagnosis is not None, report.to_json()
        assert (diagnosis.code, diagnosis.step) == ("protocol_disabled", "authenticate")
        assert diagnosis.next_action and not diagnosis.transient
        assert report.incoming.steps[-1].step == "authenticate" and not report.incoming.steps[-1].ok
        assert report.first_failure() == diagnosis
        assert mailsync.error_class(diagnosis.code) is mailsync.ProtocolDisabledError
        assert report.incoming_enabled is False
        stored = await env.op("get_mailbox", dave.id)
        assert stored.incoming_test.status == "failure" and stored.incoming_test.code == "protocol_disabled"
        assert any(a.code == "protocol_disabled" for a in stored.alerts)

    run(main())


def test_revoked_grant_then_disconnect_raises_not_connected(stack, tmp_path):
    async def main():
        env = await Env(stack, mailsync.MailSync, tmp_path / "m.db").open()
        alice = await env.connected("alice@example.test")
        token = await env.op("access_token", alice.id)
        revoke_token(token.expose())  # the provider revokes the whole grant
        # Revocation of an already revoked grant counts as done.
        gone = await env.op("disconnect", alice.id)
        assert gone.connection.state == "not_connected"
        assert env.kinds() == [("connected", "alice@example.test"), ("disconnected", "alice@example.test")]
        with pytest.raises(mailsync.NotConnectedError) as e:
            await env.op("access_token", alice.id)
        assert e.value.code == "not_connected" and e.value.next_action

    run(main())


def test_never_connected_mailbox_is_diagnosed_at_credentials(stack, tmp_path):
    async def main():
        env = await Env(stack, mailsync.MailSync, tmp_path / "m.db").open()
        carol = await env.mailbox("carol@example.test")
        report = await env.op("test_and_enable", carol.id)
        for direction in (report.incoming, report.outgoing):
            assert (direction.diagnosis.code, direction.diagnosis.step) == ("not_connected", "credentials")
            assert [s.step for s in direction.steps] == ["credentials"]
        assert not report.incoming_enabled and not report.outgoing_enabled

    run(main())


# --- Event callbacks: a raising callback, replacing and removing it ------------


def test_raising_listener_does_not_break_the_library(stack, tmp_path, monkeypatch):
    unraisable = []
    monkeypatch.setattr(sys, "unraisablehook", unraisable.append)

    def explode(event):
        raise RuntimeError(f"listener bug on {event.kind}")

    async def main():
        env = Env(stack, mailsync.blocking.MailSync, tmp_path / "m.db")
        env.settings = Settings(
            google_issuer_override=env.settings.google_issuer_override,
            extra_root_certs_pem=env.settings.extra_root_certs_pem,
            event_listener=explode,
        )
        await env.open()
        assert env.sync.settings().event_listener is explode

        alice = await env.connected("alice@example.test")
        assert alice.connection.state == "connected"
        assert [str(u.exc_value) for u in unraisable] == ["listener bug on connected"]
        assert unraisable[0].exc_type is RuntimeError

        received = []
        env.sync.set_event_listener(received.append)
        assert env.sync.settings().event_listener == received.append
        token = env.sync.access_token(alice.id)
        assert token.expose()
        env.sync.disconnect(alice.id)
        assert [(e.kind, e.email) for e in received] == [("disconnected", "alice@example.test")]

        env.sync.set_event_listener(None)
        assert env.sync.settings().event_listener is None
        bob = await env.connected("bob@example.test")
        assert bob.connection.state == "connected"
        assert len(received) == 1 and len(unraisable) == 1

        with pytest.raises(TypeError):
            env.sync.set_event_listener(42)

    run(main())


def test_async_listener_sees_events_in_order_across_mailboxes(stack, tmp_path):
    async def main():
        env = await Env(stack, mailsync.MailSync, tmp_path / "m.db").open()
        alice = await env.connected("alice@example.test")
        bob = await env.connected("bob@example.test", env.pop3)
        await env.op("disconnect", bob.id)
        await env.op("disconnect", alice.id)
        assert env.kinds() == [
            ("connected", "alice@example.test"),
            ("connected", "bob@example.test"),
            ("disconnected", "bob@example.test"),
            ("disconnected", "alice@example.test"),
        ]
        assert all(e.at.tzinfo is not None for e in env.events)

    run(main())


# --- Secrets -------------------------------------------------------------------


def test_no_secret_in_reprs_json_or_database(stack, tmp_path):
    async def main():
        env = await Env(stack, mailsync.MailSync, tmp_path / "m.db").open()
        alice = await env.connected("alice@example.test")
        token = (await env.op("access_token", alice.id)).expose()
        report = await env.op("test_and_enable", alice.id)
        info = await env.op("token_info", alice.id)
        mailbox = await env.op("get_mailbox", alice.id)
        profile = await env.op("get_profile", env.imap.id)
        client_secret = stack["oauth"]["client_secret"]
        texts = [
            repr(info), repr(report), report.to_json(), repr(mailbox), mailbox.to_json(),
            repr(profile), profile.to_json(), repr(env.settings), repr(await call(env.sync, "settings")),
            *(repr(e) + e.to_json() for e in env.events),
        ]
        for text in texts:
            assert token not in text and client_secret not in text
        assert profile.has_client_secret
        await env.op("close")
        for f in tmp_path.iterdir():
            data = f.read_bytes()
            assert token.encode() not in data and client_secret.encode() not in data, f.name

    run(main())
