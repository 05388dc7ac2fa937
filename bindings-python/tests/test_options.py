"""Options, StoreLocation/SealKey, subscriptions and the area operations'
argument errors; no network (in-memory and temporary SQLite stores)."""

import asyncio
import sys
import threading

import pytest

import mailsync
from mailsync import StoreLocation

from conftest import FLAVOURS, SECRET, Recorder, app, call, gmail, open_store, user

UNKNOWN = "00000000-0000-4000-8000-000000000000"
BAD_PEM = "-----BEGIN CERTIFICATE-----\nnope\n-----END CERTIFICATE-----\n"


def test_default_options_are_the_core_defaults():
    o = mailsync.default_options()
    assert o.extra_root_certs_pem == [] and o.google_issuer_override is None
    assert (o.token_refresh_skew_secs, o.http_timeout_secs, o.refresh_lease_secs, o.consent_ttl_secs) == (300, 30, 60, 600)
    r = o.refresh_retry
    assert (r.attempts, r.initial_backoff_ms, r.max_backoff_ms) == (4, 250, 4000)
    assert o.failure_policy == mailsync.default_failure_policy()
    assert (o.failure_policy.max_retries, o.failure_policy.interval_secs) == (10, 300)
    mailsync.validate_options(o)
    sync = mailsync.blocking.MailSync.open(StoreLocation.memory(), o)
    assert sync.options == o


@pytest.mark.parametrize("name", FLAVOURS)
def test_options_round_trip_through_the_core(name):
    async def main():
        o = mailsync.default_options()
        o.google_issuer_override = "http://127.0.0.1:9/"
        o.token_refresh_skew_secs, o.http_timeout_secs, o.refresh_lease_secs, o.consent_ttl_secs = 1, 2, 9, 7
        o.refresh_retry = mailsync.RetryPolicy(2, 0, 1000)
        sync = await open_store(FLAVOURS[name], StoreLocation.memory(), o)
        got = sync.options
        assert got == o and got is not o
        assert (got.google_issuer_override, got.http_timeout_secs, got.refresh_retry.attempts) == ("http://127.0.0.1:9/", 2, 2)
        await call(sync, "close")

    asyncio.run(main())


@pytest.mark.parametrize(
    "field, value, named",
    [
        ("http_timeout_secs", 0, "http_timeout_secs"),
        ("consent_ttl_secs", 2**32 - 1, "consent_ttl_secs"),
        ("refresh_lease_secs", 10, "refresh_lease_secs"),
        ("google_issuer_override", "not a url", "google_issuer_override"),
        ("google_issuer_override", "", "google_issuer_override"),
        ("refresh_retry", mailsync.RetryPolicy(0, 250, 4000), "refresh_retry.attempts"),
    ],
)
def test_bad_options_raise_validation_error_naming_the_field(field, value, named):
    o = mailsync.default_options()
    setattr(o, field, value)
    with pytest.raises(mailsync.ValidationError) as e:
        mailsync.validate_options(o)
    assert e.value.field == named and e.value.code == "validation"
    with pytest.raises(mailsync.ValidationError) as e:
        mailsync.blocking.MailSync.open(StoreLocation.memory(), o)
    assert e.value.field == named


@pytest.mark.parametrize(
    "field, value",
    [("http_timeout_secs", "30"), ("consent_ttl_secs", 1.5), ("extra_root_certs_pem", BAD_PEM),
     ("refresh_retry", 3), ("failure_policy", None), ("google_issuer_override", 42)],
)
def test_wrong_types_raise_type_error(field, value):
    with pytest.raises(TypeError):
        setattr(mailsync.default_options(), field, value)


def test_unusable_pem_is_refused_when_the_store_opens(tmp_path):
    o = mailsync.default_options()
    o.extra_root_certs_pem = [BAD_PEM]
    with pytest.raises(mailsync.ValidationError):
        mailsync.blocking.MailSync.open(StoreLocation.memory(), o)
    with pytest.raises(mailsync.ValidationError):
        mailsync.blocking.MailSync.open(StoreLocation.sqlite(tmp_path / "m.db"), o)
    assert list(tmp_path.iterdir()) == []  # refused before any file was made


@pytest.mark.parametrize("name", FLAVOURS)
def test_sqlite_with_a_host_key(tmp_path, name):
    async def main():
        flavour = FLAVOURS[name]
        path, key = tmp_path / "m.db", mailsync.SealKey.generate()
        o = mailsync.default_options()
        o.consent_ttl_secs = 180
        sync = await open_store(flavour, StoreLocation.sqlite(path, key), o)
        assert isinstance(sync, flavour) and sync.options.consent_ttl_secs == 180
        await call(sync.directory, "create_profile", gmail("Keyed", default=True))
        await call(sync, "close")
        assert not (tmp_path / "m.db.key").exists()  # the host's key, not a key file
        again = await open_store(flavour, StoreLocation.sqlite(path, key))
        assert (await call(again.directory, "find_profile", "Keyed")).authentication.app.client_secret == "********"
        await call(again, "close")
        with pytest.raises(mailsync.SealKeyMismatchError) as e:
            await open_store(flavour, StoreLocation.sqlite(path, mailsync.SealKey.generate()))
        assert e.value.code == "seal_key_mismatch"
        with pytest.raises(TypeError):
            StoreLocation.sqlite(path, bytes(32))
        with pytest.raises(TypeError):
            await open_store(flavour, str(path))
        with pytest.raises(TypeError):
            await call(flavour, "open", StoreLocation.memory(), {"consent_ttl_secs": 1})

    asyncio.run(main())


def test_test_options():
    assert mailsync.TestOptions(False).send_test_message is False
    assert mailsync.TestOptions(send_test_message=True) == mailsync.TestOptions(True)
    with pytest.raises(TypeError):
        mailsync.TestOptions()


@pytest.mark.parametrize("name", FLAVOURS)
def test_area_operations_reject_garbage_with_codes(name):
    async def main():
        sync = await open_store(FLAVOURS[name], StoreLocation.memory())
        c, k = sync.connections, sync.checks
        for area, op, extra in [(c, "connect", ()), (c, "access_token", ()), (c, "disconnect", ()),
                                (c, "refresh_access_token", ("raw",)), (k, "test_and_enable", (mailsync.TestOptions(False),))]:
            for garbage in ("not-an-id", UNKNOWN):
                with pytest.raises(mailsync.NotFoundError):
                    await call(area, op, garbage, *extra)
            with pytest.raises(TypeError):
                await call(area, op, 42, *extra)
        with pytest.raises(mailsync.NotFoundError):
            await call(c, "grant_info", UNKNOWN)
        with pytest.raises(mailsync.NotFoundError):
            await call(k, "test_all", UNKNOWN, mailsync.TestOptions(False))
        with pytest.raises(TypeError):
            await call(k, "test_and_enable", UNKNOWN, {"send_test_message": True})
        for junk in (None, 42):
            with pytest.raises(TypeError):
                await call(c, "refresh_access_token", UNKNOWN, junk)
        for junk in ("", "?", "code=abc", "https://evil.example/cb?code=1&state=2", "\x00" * 10):
            with pytest.raises(mailsync.MailsyncError) as e:
                await call(c, "complete", junk)
            assert e.value.code in ("state_invalid", "validation")

        # A mailbox whose profile does not use OAuth cannot be connected.
        testing = mailsync.app_with_test_users(mailsync.app_with_audience(app(), "external", "testing"), ["t@example.com"])
        google = mailsync.gmail_profile("g", testing)
        google.default_for_new_mailboxes = True
        google = await call(sync.directory, "create_profile", google)
        creds = await call(sync.directory, "create_profile", mailsync.generic_profile(
            "pw",
            mailsync.IncomingEndpoint("imap", mailsync.Endpoint("imap.example.com", 993, "tls")),
            mailsync.Endpoint("smtp.example.com", 587, "start_tls"),
            mailsync.Authentication.CredentialsInProfile("u", "p"),
        ))
        mailbox = await call(sync.directory, "create_mailbox", user("x@example.com", creds.id))
        with pytest.raises(mailsync.ValidationError) as e:
            await call(c, "connect", mailbox.id)
        assert e.value.field == "authentication"
        # Without an issuer override, Gmail OAuth profiles use Google's built-in
        # endpoints: connect needs no network.
        tester = await call(sync.directory, "create_mailbox", user("t@example.com", google.id))
        request = await call(c, "connect", tester.id)
        assert request.url.startswith("https://accounts.google.com/o/oauth2/v2/auth?")
        assert request.mailbox_id == tester.id and request.expires_at.tzinfo is not None
        assert SECRET not in request.url and SECRET not in repr(request)
        pending = (await call(sync.directory, "state", tester.id)).pending_consent
        assert pending is not None and pending.expires_at == request.expires_at
        await call(sync, "close")

    asyncio.run(main())


async def never_connected(sync):
    d = sync.directory
    await call(d, "create_profile", gmail("Offline", default=True))
    return await call(d, "create_mailbox", user("offline@example.com"))


@pytest.mark.parametrize("name", FLAVOURS)
def test_subscriptions_deliver_snapshots_then_changes_in_order(name):
    async def main():
        sync = await open_store(FLAVOURS[name], StoreLocation.memory())
        mailbox = await never_connected(sync)
        everything, one = Recorder(skip_snapshots=False), Recorder(skip_snapshots=False)
        sub_all = await call(sync, "subscribe", None, everything)
        await call(sync, "subscribe", mailbox.id, one)
        await everything.wait(1)
        [snapshot] = everything.events
        assert (snapshot.kind, snapshot.mailbox_id, snapshot.email) == ("snapshot", mailbox.id, "offline@example.com")
        assert snapshot.state == await call(sync.directory, "state", mailbox.id) and snapshot.at.tzinfo is not None
        await call(sync.checks, "test_and_enable", mailbox.id, mailsync.TestOptions(False))  # not connected: disabled
        events = await one.wait(2)
        assert [e.kind for e in events] == ["snapshot", "direction_disabled"]
        assert events[1].code == "not_connected" and isinstance(events[1].state.incoming.status, mailsync.DirectionStatus.Disabled)
        await everything.wait(2)
        sub_all.cancel()
        sub_all.cancel()  # idempotent
        await call(sync.checks, "test_and_enable", mailbox.id, mailsync.TestOptions(False))
        await one.wait(3)
        assert len(everything.events) == 2
        await call(sync, "close")  # ends the remaining subscription

    asyncio.run(main())


def test_async_callbacks_run_on_the_loop_one_at_a_time():
    async def main():
        sync = await open_store(mailsync.MailSync, StoreLocation.memory())
        mailbox = await never_connected(sync)
        seen, loop_thread = [], threading.get_ident()

        async def slow(event):
            seen.append(("start", event.kind, threading.get_ident() == loop_thread))
            await asyncio.sleep(0.05)
            seen.append(("end", event.kind))

        await sync.subscribe(None, slow)
        await sync.checks.test_and_enable(mailbox.id, mailsync.TestOptions(False))
        for _ in range(200):
            if len(seen) == 4:
                break
            await asyncio.sleep(0.01)
        assert seen == [("start", "snapshot", True), ("end", "snapshot"),
                        ("start", "direction_disabled", True), ("end", "direction_disabled")]
        await sync.close()

    asyncio.run(main())


@pytest.mark.parametrize("name", FLAVOURS)
def test_raising_callbacks_do_not_break_the_library(name, monkeypatch):
    unraisable = []
    monkeypatch.setattr(sys, "unraisablehook", unraisable.append)

    async def main():
        sync = await open_store(FLAVOURS[name], StoreLocation.memory())
        mailbox = await never_connected(sync)
        after = Recorder(skip_snapshots=False)

        def explode(event):
            after(event)
            raise RuntimeError(f"callback bug on {event.kind}")

        async def explode_later(event):
            raise RuntimeError(f"async callback bug on {event.kind}")

        await call(sync, "subscribe", None, explode)
        await call(sync, "subscribe", None, explode_later)
        await after.wait(1)
        await call(sync.checks, "test_and_enable", mailbox.id, mailsync.TestOptions(False))
        await after.wait(2)  # the subscription survived its callback's exception
        for _ in range(200):
            if len(unraisable) == 4:
                break
            await asyncio.sleep(0.01)
        assert sorted(str(u.exc_value) for u in unraisable) == [
            "async callback bug on direction_disabled", "async callback bug on snapshot",
            "callback bug on direction_disabled", "callback bug on snapshot",
        ]
        assert all(u.exc_type is RuntimeError for u in unraisable)
        with pytest.raises(TypeError):
            await call(sync, "subscribe", None, 42)
        assert (await call(sync.directory, "get_mailbox", mailbox.id)).email == "offline@example.com"
        await call(sync, "close")

    asyncio.run(main())
