"""Against the real local stack (tests/stack): the OAuth lifecycle (connect ->
consent pages -> complete -> access_token -> refresh_access_token ->
disconnect), events, the consent failures and Test & Enable over IMAP/POP3
+ SMTP.

Every test opens its own SQLite file with its own profiles and mailboxes.
The consent pages are walked by tests/stack/bin/consent (no browser).
Tests that revoke (or whose refused grant the library revokes) run one at a
time: the provider revokes every grant of the account on the client."""

import asyncio
import time
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import pytest

import mailsync
from mailsync import GrantStatus

from conftest import FLAVOURS, Env, Recorder, call, revoke_token, walk_consent


def run(coro):
    return asyncio.run(coro)


def with_query(url, **changes):
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    query.update(changes)
    return urlunsplit(parts._replace(query=urlencode(query)))


LIFECYCLE_KINDS = {"connected", "refreshed", "needs_reconsent", "disconnected", "consent_failed"}


@pytest.mark.parametrize("name", FLAVOURS)
def test_imap_lifecycle_connect_token_test_and_enable_disconnect(stack, tmp_path, name):
    async def main():
        env = await Env(stack, FLAVOURS[name], tmp_path / "m.db").open()
        email = "alice@example.test"
        mailbox = await env.mailbox(email)
        assert isinstance(await env.grant(mailbox.id), GrantStatus.NotConnected)

        request = await env.conn("connect", mailbox.id)
        assert isinstance(request, mailsync.ConsentRequest)
        assert request.url.startswith(stack["oauth"]["authorization_endpoint"])
        assert request.mailbox_id == mailbox.id and request.expires_at.tzinfo is not None
        waiting = await env.dir("state", mailbox.id)
        assert waiting.pending_consent.expires_at == request.expires_at

        redirect = walk_consent(stack, request.url, email)
        assert redirect.startswith("http://localhost:8765/_grid/cmds/dlg_gmailoauth.aspx?")
        status = await env.conn("complete", redirect)
        assert isinstance(status, mailsync.MailboxStatus) and status.mailbox.id == mailbox.id
        grant = status.state.grant
        assert isinstance(grant, GrantStatus.Connected) and grant.account == email and grant.since.tzinfo is not None
        assert status.state.pending_consent is None and await env.grant(mailbox.id) == grant
        await env.saw(("connected", email))
        event = next(e for e in env.events.events if e.kind == "connected")
        assert isinstance(event, mailsync.MailboxEvent)
        assert event.mailbox_id == mailbox.id and event.code is None and event.message and event.state.grant == grant

        token = await env.conn("access_token", mailbox.id)
        raw = token.token
        assert isinstance(raw, str) and len(raw) > 10 and token.account == email
        assert raw not in repr(token) and raw not in str(token) and "REDACTED" in repr(token)
        info = await env.conn("grant_info", mailbox.id)
        assert info.account == email and info.has_refresh_token and "https://mail.google.com/" in info.scopes
        assert (info.issuer.rstrip("/"), info.client_id) == (stack["oauth"]["issuer"].rstrip("/"), stack["oauth"]["client_id"])
        assert raw not in repr(info)

        report = await env.check(mailbox.id)
        assert isinstance(report, mailsync.TestReport)
        assert report.outcome == "success", repr(report)
        assert report.incoming.protocol == "IMAP" and report.incoming.direction == "incoming"
        assert report.incoming.server == f"127.0.0.1:{stack['imap']['tls_port']}"
        steps = [s.step for s in report.incoming.steps]
        assert steps[0] == "credentials" and "tls" in steps and "authenticate" in steps and "select_inbox" in steps
        assert all(s.ok for s in report.incoming.steps) and report.incoming.diagnosis is None
        assert report.outgoing.protocol == "SMTP" and report.outgoing.success
        assert "ehlo" in [s.step for s in report.outgoing.steps]
        assert report.incoming_enabled and report.outgoing_enabled
        assert raw not in repr(report)
        state = await env.dir("state", mailbox.id)
        for direction in (state.incoming, state.outgoing):
            assert isinstance(direction.status, mailsync.DirectionStatus.Enabled)
            assert isinstance(direction.last_test, mailsync.TestStatus.Success)
        assert (await call(env.sync.checks, "last_profile_test", env.imap.id)).outcome == "success"

        gone = await env.conn("disconnect", mailbox.id)
        assert isinstance(gone.state.grant, GrantStatus.NotConnected)
        await env.saw(("connected", email), ("disconnected", email), kinds=LIFECYCLE_KINDS)
        with pytest.raises(mailsync.NotConnectedError) as e:
            await env.conn("access_token", mailbox.id)
        assert e.value.code == "not_connected"
        assert await env.conn("grant_info", mailbox.id) is None
        again = await env.conn("disconnect", mailbox.id)  # idempotent
        assert isinstance(again.state.grant, GrantStatus.NotConnected)
        await call(env.sync, "close")

    run(main())


@pytest.mark.parametrize("name", FLAVOURS)
def test_refresh_access_token_replaces_a_rejected_token_once(stack, tmp_path, name):
    async def main():
        env = await Env(stack, FLAVOURS[name], tmp_path / "m.db").open()
        email = "alice@example.test"
        alice = await env.connected(email)
        t1 = await env.conn("access_token", alice.id)
        before = await env.conn("grant_info", alice.id)

        t2 = await env.conn("refresh_access_token", alice.id, t1.token)
        assert isinstance(t2, mailsync.AccessToken) and t2.account == email
        assert t2.token != t1.token and t2.token not in repr(t2)
        await env.saw(("connected", email), ("refreshed", email), kinds=LIFECYCLE_KINDS)
        refreshed = env.events.events[-1]
        assert refreshed.mailbox_id == alice.id and refreshed.code is None
        after = await env.conn("grant_info", alice.id)
        assert after.version > before.version

        # t1 was already replaced: the stored t2 comes back, no second refresh.
        t3 = await env.conn("refresh_access_token", alice.id, t1.token)
        assert t3.token == t2.token
        assert (await env.conn("grant_info", alice.id)).version == after.version
        assert (await env.conn("access_token", alice.id)).token == t2.token

        # Rejecting the current token refreshes again.
        t4 = await env.conn("refresh_access_token", alice.id, t2.token)
        assert t4.token not in (t1.token, t2.token)

        # Unknown ids (no provider request), wrong types, a mailbox without tokens.
        for unknown in ("not-an-id", "00000000-0000-4000-8000-000000000000"):
            with pytest.raises(mailsync.NotFoundError) as e:
                await env.conn("refresh_access_token", unknown, t4.token)
            assert e.value.code == "not_found"
        with pytest.raises(TypeError):
            await env.conn("refresh_access_token", alice.id, t4)
        with pytest.raises(TypeError):
            await env.conn("refresh_access_token", 42, t4.token)
        carol = await env.mailbox("carol@example.test")
        with pytest.raises(mailsync.NotConnectedError) as e:
            await env.conn("refresh_access_token", carol.id, t4.token)
        assert e.value.code == "not_connected"
        await env.conn("disconnect", alice.id)
        # Events are in order: exactly two refreshes happened before the disconnect.
        await env.saw(("connected", email), ("refreshed", email), ("refreshed", email), ("disconnected", email),
                      kinds=LIFECYCLE_KINDS)
        await call(env.sync, "close")

    run(main())


def test_refresh_access_token_after_revocation_raises_token_revoked(stack, tmp_path):
    async def main():
        env = await Env(stack, mailsync.MailSync, tmp_path / "m.db").open()
        email = "bob@example.test"
        bob = await env.connected(email)
        token = await env.conn("access_token", bob.id)
        revoke_token(token.token)  # the provider revokes the whole grant
        with pytest.raises(mailsync.TokenRevokedError) as e:
            await env.conn("refresh_access_token", bob.id, token.token)
        assert e.value.code == "token_revoked" and not e.value.transient and e.value.next_action
        assert token.token not in str(e.value) and token.token not in repr(e.value)
        await env.saw(("connected", email), ("needs_reconsent", email), kinds=LIFECYCLE_KINDS)
        assert env.events.events[-1].code == "token_revoked"
        grant = await env.grant(bob.id)
        assert isinstance(grant, GrantStatus.NeedsReconsent) and grant.code == "token_revoked"
        await env.sync.close()

    run(main())


def test_pop3_smtp_tls_test_and_enable_and_test_all(stack, tmp_path):
    async def main():
        env = await Env(stack, mailsync.MailSync, tmp_path / "m.db").open()
        bob = await env.connected("bob@example.test", env.pop3)
        assert bob.profile_id == env.pop3.id

        report = await env.check(bob.id)
        assert report.outcome == "success", repr(report)
        assert report.incoming.protocol == "POP3"
        assert report.incoming.server == f"127.0.0.1:{stack['pop3']['tls_port']}"
        assert "stat" in [s.step for s in report.incoming.steps]
        assert report.outgoing.server == f"127.0.0.1:{stack['smtp']['tls_port']}"
        assert report.incoming_enabled and report.outgoing_enabled

        reports = await env.sync.checks.test_all(env.pop3.id, mailsync.TestOptions(False))
        assert [r.email for r in reports] == ["bob@example.test"] and reports[0].outcome == "success"
        await env.sync.close()

    run(main())


def test_consent_denied_raises_consent_denied_error(stack, tmp_path):
    async def main():
        env = await Env(stack, mailsync.MailSync, tmp_path / "m.db").open()
        mailbox = await env.mailbox("carol@example.test")
        request = await env.conn("connect", mailbox.id)
        redirect = walk_consent(stack, request.url, "carol@example.test", "--deny")
        assert "error=access_denied" in redirect
        with pytest.raises(mailsync.ConsentDeniedError) as e:
            await env.conn("complete", redirect)
        assert e.value.code == "consent_denied" and not e.value.transient
        assert isinstance(await env.grant(mailbox.id), GrantStatus.NotConnected)
        await env.saw(("consent_failed", "carol@example.test"), kinds=LIFECYCLE_KINDS)
        assert env.events.events[-1].code == "consent_denied"
        with pytest.raises(mailsync.NotConnectedError):
            await env.conn("access_token", mailbox.id)
        await env.sync.close()

    run(main())


def test_unchecked_mail_scope_raises_scope_not_granted(stack, tmp_path):
    async def main():
        env = await Env(stack, mailsync.MailSync, tmp_path / "m.db").open()
        mailbox = await env.mailbox("alice@example.test")
        request = await env.conn("connect", mailbox.id)
        redirect = walk_consent(stack, request.url, "alice@example.test", "--uncheck-scope", "https://mail.google.com/")
        with pytest.raises(mailsync.ScopeNotGrantedError) as e:
            await env.conn("complete", redirect)
        assert e.value.code == "scope_not_granted" and e.value.next_action
        assert await env.conn("grant_info", mailbox.id) is None  # nothing stored
        assert isinstance(await env.grant(mailbox.id), GrantStatus.NotConnected)
        assert any(a.code == "scope_not_granted" for a in await env.dir("alerts", mailbox.id))
        await env.saw(("consent_failed", "alice@example.test"), kinds=LIFECYCLE_KINDS)
        await env.sync.close()

    run(main())


def test_another_account_consenting_raises_account_mismatch(stack, tmp_path):
    async def main():
        env = await Env(stack, mailsync.MailSync, tmp_path / "m.db").open()
        mailbox = await env.mailbox("alice@example.test")
        request = await env.conn("connect", mailbox.id)
        redirect = walk_consent(stack, request.url, "bob@example.test")  # bob signs in on alice's link
        with pytest.raises(mailsync.AccountMismatchError) as e:
            await env.conn("complete", redirect)
        assert e.value.code == "account_mismatch"
        assert "bob@example.test" in e.value.message and "alice@example.test" in e.value.message
        assert await env.conn("grant_info", mailbox.id) is None  # nothing stored
        assert isinstance(await env.grant(mailbox.id), GrantStatus.NotConnected)
        await env.saw(("consent_failed", "alice@example.test"), kinds=LIFECYCLE_KINDS)
        await env.sync.close()

    run(main())


def test_tampered_replayed_or_expired_state_raises_state_invalid_error(stack, tmp_path):
    async def main():
        env = await Env(stack, mailsync.MailSync, tmp_path / "m.db").open()
        mailbox = await env.mailbox("alice@example.test")
        request = await env.conn("connect", mailbox.id)
        redirect = walk_consent(stack, request.url, "alice@example.test")
        state = dict(parse_qsl(urlsplit(redirect).query))["state"]

        for bad in (with_query(redirect, state=state[:-2] + "xx"), with_query(redirect, state=""), "garbage"):
            with pytest.raises(mailsync.StateInvalidError) as e:
                await env.conn("complete", bad)
            assert e.value.code == "state_invalid"
        # The genuine redirect still works once (the query alone is accepted too)...
        done = await env.conn("complete", urlsplit(redirect).query)
        assert isinstance(done.state.grant, GrantStatus.Connected)
        # ...and never twice.
        with pytest.raises(mailsync.StateInvalidError):
            await env.conn("complete", redirect)
        await env.sync.close()

    run(main())


def test_consent_ttl_option_reaches_the_core(stack, tmp_path):
    async def main():
        env = await Env(stack, mailsync.MailSync, tmp_path / "m.db", consent_ttl_secs=1).open()
        assert env.sync.options.consent_ttl_secs == 1
        mailbox = await env.mailbox("alice@example.test")
        request = await env.conn("connect", mailbox.id)
        redirect = walk_consent(stack, request.url, "alice@example.test")
        time.sleep(max(0.0, request.expires_at.timestamp() - time.time()) + 0.2)  # the shortest TTL is 1 s
        with pytest.raises(mailsync.StateInvalidError):
            await env.conn("complete", redirect)
        await env.sync.close()

    run(main())


def test_protocol_disabled_account_is_diagnosed_at_authenticate(stack, tmp_path):
    async def main():
        env = await Env(stack, mailsync.MailSync, tmp_path / "m.db").open()
        dave = await env.connected("dave@example.test")
        report = await env.check(dave.id)
        assert report.outcome == "failure"
        diagnosis = report.incoming.diagnosis
        assert diagnosis is not None, repr(report)
        assert (diagnosis.code, diagnosis.step) == ("protocol_disabled", "authenticate")
        assert diagnosis.next_action and not diagnosis.transient
        assert report.incoming.steps[-1].step == "authenticate" and not report.incoming.steps[-1].ok
        assert mailsync.error_class(diagnosis.code) is mailsync.ProtocolDisabledError
        assert report.incoming_enabled is False
        state = await env.dir("state", dave.id)
        assert isinstance(state.incoming.last_test, mailsync.TestStatus.Failure)
        assert state.incoming.last_test.code == "protocol_disabled"
        assert isinstance(state.incoming.status, mailsync.DirectionStatus.Disabled)
        assert any(a.code == "protocol_disabled" for a in await env.dir("alerts", dave.id))
        await env.sync.close()

    run(main())


def test_revoked_grant_then_disconnect_raises_not_connected(stack, tmp_path):
    async def main():
        env = await Env(stack, mailsync.MailSync, tmp_path / "m.db").open()
        alice = await env.connected("alice@example.test")
        token = await env.conn("access_token", alice.id)
        revoke_token(token.token)  # the provider revokes the whole grant
        # Revocation of an already revoked grant counts as done.
        gone = await env.conn("disconnect", alice.id)
        assert isinstance(gone.state.grant, GrantStatus.NotConnected)
        await env.saw(("connected", "alice@example.test"), ("disconnected", "alice@example.test"), kinds=LIFECYCLE_KINDS)
        with pytest.raises(mailsync.NotConnectedError) as e:
            await env.conn("access_token", alice.id)
        assert e.value.code == "not_connected" and e.value.next_action
        await env.sync.close()

    run(main())


def test_never_connected_mailbox_is_diagnosed_at_credentials(stack, tmp_path):
    async def main():
        env = await Env(stack, mailsync.MailSync, tmp_path / "m.db").open()
        carol = await env.mailbox("carol@example.test")
        report = await env.check(carol.id)
        for direction in (report.incoming, report.outgoing):
            assert (direction.diagnosis.code, direction.diagnosis.step) == ("not_connected", "credentials")
            assert [s.step for s in direction.steps] == ["credentials"]
        assert not report.incoming_enabled and not report.outgoing_enabled
        await env.sync.close()

    run(main())


def test_events_arrive_in_order_across_mailboxes(stack, tmp_path):
    async def main():
        env = await Env(stack, mailsync.MailSync, tmp_path / "m.db").open()
        alice = await env.connected("alice@example.test")
        bob = await env.connected("bob@example.test", env.pop3)
        await env.conn("disconnect", bob.id)
        await env.conn("disconnect", alice.id)
        await env.saw(
            ("connected", "alice@example.test"),
            ("connected", "bob@example.test"),
            ("disconnected", "bob@example.test"),
            ("disconnected", "alice@example.test"),
            kinds=LIFECYCLE_KINDS,
        )
        assert all(e.at.tzinfo is not None for e in env.events.events)
        # A subscription to one mailbox starts with its snapshot.
        one = Recorder(skip_snapshots=False)
        await env.sync.subscribe(alice.id, one)
        [snapshot] = await one.wait(1)
        assert (snapshot.kind, snapshot.mailbox_id) == ("snapshot", alice.id)
        assert isinstance(snapshot.state.grant, GrantStatus.NotConnected)
        await env.sync.close()

    run(main())


def test_no_secret_in_reprs_errors_or_database(stack, tmp_path):
    async def main():
        env = await Env(stack, mailsync.MailSync, tmp_path / "m.db").open()
        alice = await env.connected("alice@example.test")
        token = await env.conn("access_token", alice.id)
        report = await env.check(alice.id)
        client_secret = stack["oauth"]["client_secret"]
        objects = [token, await env.conn("grant_info", alice.id), report, await env.dir("get_mailbox", alice.id),
                   await env.dir("get_profile", env.imap.id), await env.dir("status", alice.id), env.options,
                   env.sync.options, *env.events.events]
        texts = [text for obj in objects for text in (repr(obj), str(obj))]
        try:
            await env.conn("refresh_access_token", "no-such-mailbox", token.token)
        except mailsync.MailsyncError as e:
            texts += [repr(e), str(e)]
        assert any("REDACTED" in text for text in texts)
        for text in texts:
            assert token.token not in text and client_secret not in text
        await env.sync.close()
        for f in tmp_path.iterdir():
            data = f.read_bytes()
            assert token.token.encode() not in data and client_secret.encode() not in data, f.name

    run(main())
