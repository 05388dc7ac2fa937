"""Settings, RetryPolicy, TestOptions and the round-2 operations' argument
errors; no network (in-memory stores)."""

import asyncio
from datetime import timedelta

import pytest

import mailsync
from mailsync import MailboxSpec, OAuthApp, RetryPolicy, ServerProfile, Settings

from conftest import CLIENT_ID, SECRET, call

FLAVOURS = {"async": mailsync.MailSync, "blocking": mailsync.blocking.MailSync}
UNKNOWN = "00000000-0000-4000-8000-000000000000"


def test_settings_defaults_are_the_core_defaults():
    s = Settings()
    assert s.extra_root_certs_pem == [] and s.google_issuer_override is None
    assert s.token_refresh_skew == timedelta(minutes=5)
    assert s.http_timeout == timedelta(seconds=30)
    assert s.refresh_lease == timedelta(seconds=60)
    assert s.consent_ttl == timedelta(minutes=10)
    assert s.refresh_retry == RetryPolicy()
    r = s.refresh_retry
    assert (r.attempts, r.initial_backoff, r.max_backoff) == (4, timedelta(milliseconds=250), timedelta(seconds=4))
    assert s.event_listener is None
    assert mailsync.MailSync.in_memory().settings().consent_ttl == s.consent_ttl


def test_settings_values_round_trip_through_the_core():
    listener = print
    s = Settings(
        google_issuer_override="http://127.0.0.1:9/",
        token_refresh_skew=timedelta(seconds=1),
        http_timeout=timedelta(milliseconds=1500),
        refresh_retry=RetryPolicy(attempts=2, initial_backoff=timedelta(0), max_backoff=timedelta(seconds=1)),
        refresh_lease=timedelta(seconds=5),
        consent_ttl=timedelta(seconds=7),
        event_listener=listener,
    )
    for flavour in FLAVOURS.values():
        got = flavour.in_memory_with(s).settings()
        assert got.google_issuer_override == "http://127.0.0.1:9/"
        assert got.http_timeout == timedelta(milliseconds=1500)
        assert got.refresh_retry.attempts == 2
        assert (got.token_refresh_skew, got.refresh_lease, got.consent_ttl) == (
            timedelta(seconds=1), timedelta(seconds=5), timedelta(seconds=7))
        assert got.event_listener is listener
    assert "listener" not in repr(s) or "<callable>" in repr(s)


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"http_timeout": timedelta(seconds=-1)}, "http_timeout"),
        ({"consent_ttl": timedelta(days=-1)}, "consent_ttl"),
        ({"google_issuer_override": "not a url"}, "google_issuer_override"),
        ({"google_issuer_override": ""}, "google_issuer_override"),
    ],
)
def test_bad_settings_raise_validation_error_naming_the_field(kwargs, field):
    with pytest.raises(mailsync.ValidationError) as e:
        Settings(**kwargs)
    assert e.value.field == field and e.value.code == "validation"


def test_bad_retry_policy():
    with pytest.raises(mailsync.ValidationError) as e:
        RetryPolicy(attempts=0)
    assert e.value.field == "refresh_retry.attempts"
    with pytest.raises(mailsync.ValidationError):
        RetryPolicy(attempts=-1)
    with pytest.raises(mailsync.ValidationError):
        RetryPolicy(max_backoff=timedelta(seconds=-5))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"http_timeout": 30},
        {"consent_ttl": "10m"},
        {"extra_root_certs_pem": "-----BEGIN CERTIFICATE-----"},
        {"event_listener": 42},
        {"refresh_retry": 3},
    ],
)
def test_wrong_types_raise_type_error(kwargs):
    with pytest.raises(TypeError):
        Settings(**kwargs)


def test_unusable_pem_is_refused_when_the_store_opens(tmp_path):
    bad = Settings(extra_root_certs_pem=["-----BEGIN CERTIFICATE-----\nnope\n-----END CERTIFICATE-----\n"])
    assert "nope" not in repr(bad) and "<1 PEM>" in repr(bad)
    with pytest.raises(mailsync.MailsyncError) as e:
        mailsync.MailSync.in_memory_with(bad)
    assert e.value.code == "validation"
    with pytest.raises(mailsync.MailsyncError) as e:
        mailsync.blocking.MailSync.open_sqlite_with(tmp_path / "m.db", bad)
    assert e.value.code == "validation"


@pytest.mark.parametrize("name", FLAVOURS)
def test_open_sqlite_with_key_and_settings(tmp_path, name):
    async def main():
        flavour = FLAVOURS[name]
        path = tmp_path / "m.db"
        key = mailsync.SealKey.generate()
        events = []
        settings = Settings(consent_ttl=timedelta(minutes=3), event_listener=events.append)
        sync = await call(flavour, "open_sqlite_with_key_and_settings", path, key, settings)
        assert isinstance(sync, flavour)
        assert sync.settings().consent_ttl == timedelta(minutes=3)
        assert sync.settings().event_listener == events.append
        app = OAuthApp.google(CLIENT_ID, SECRET).for_environment("https://contoso.crm.example.com")
        await call(sync, "create_profile", ServerProfile.gmail("Keyed", app, default_for_new_mailboxes=True))
        await call(sync, "close")
        # The host's key, not a key file next to the database.
        assert not (tmp_path / "m.db.key").exists()
        again = await call(flavour, "open_sqlite_with_key_and_settings", path, key, Settings())
        assert (await call(again, "find_profile", "Keyed")).has_client_secret
        await call(again, "close")
        with pytest.raises(mailsync.SealKeyMismatchError) as e:
            await call(flavour, "open_sqlite_with_key_and_settings", path, mailsync.SealKey.generate(), Settings())
        assert e.value.code == "seal_key_mismatch"
        bad = Settings(extra_root_certs_pem=["-----BEGIN CERTIFICATE-----\nnope\n-----END CERTIFICATE-----\n"])
        with pytest.raises(mailsync.ValidationError) as e:
            await call(flavour, "open_sqlite_with_key_and_settings", tmp_path / "other.db", key, bad)
        assert e.value.code == "validation"
        with pytest.raises(TypeError):
            await call(flavour, "open_sqlite_with_key_and_settings", path, bytes(32), Settings())
        with pytest.raises(TypeError):
            await call(flavour, "open_sqlite_with_key_and_settings", path, key, {"consent_ttl": 1})

    asyncio.run(main())


def test_test_options():
    assert mailsync.TestOptions().send_test_message is False
    assert mailsync.TestOptions(send_test_message=True) == mailsync.TestOptions(send_test_message=True)
    with pytest.raises(TypeError):
        mailsync.TestOptions(True)


@pytest.mark.parametrize("name", FLAVOURS)
def test_round2_operations_reject_garbage_with_codes(name):
    async def main():
        sync = FLAVOURS[name].in_memory_with(Settings())
        for op in ("connect", "access_token", "token_info", "disconnect", "test_and_enable"):
            with pytest.raises(mailsync.ValidationError) as e:
                await call(sync, op, "not-an-id")
            assert e.value.field == "mailbox_id"
            with pytest.raises(mailsync.NotFoundError):
                await call(sync, op, UNKNOWN)
            with pytest.raises(TypeError):
                await call(sync, op, 42)
        with pytest.raises(mailsync.ValidationError):
            await call(sync, "test_all_mailboxes", "")
        with pytest.raises(mailsync.NotFoundError):
            await call(sync, "test_all_mailboxes", UNKNOWN, mailsync.TestOptions())
        with pytest.raises(TypeError):
            await call(sync, "test_and_enable_with", UNKNOWN, {"send_test_message": True})
        # `rejected` is the AccessToken object, never the raw token string.
        for junk in ("raw-token", None, 42):
            with pytest.raises(TypeError):
                await call(sync, "refresh_access_token", UNKNOWN, junk)
        for junk in ("", "?", "code=abc", "https://evil.example/cb?code=1&state=2", "\x00" * 10):
            with pytest.raises(mailsync.MailsyncError) as e:
                await call(sync, "complete_connect", junk)
            assert e.value.code in ("state_invalid", "validation")

        # A mailbox whose profile does not use OAuth cannot be connected.
        app = (
            OAuthApp.google(CLIENT_ID, SECRET)
            .for_environment("https://contoso.crm.example.com")
            .with_audience("external", "testing")
            .with_test_users(["t@example.com"])
        )
        gmail = await call(sync, "create_profile", ServerProfile.gmail("g", app, default_for_new_mailboxes=True))
        creds = await call(
            sync,
            "create_profile",
            ServerProfile.generic(
                "pw",
                mailsync.IncomingEndpoint("imap", mailsync.Endpoint("imap.example.com", 993, "tls")),
                mailsync.Endpoint("smtp.example.com", 587, "start_tls"),
                mailsync.Authentication.credentials_in_profile("u", "p"),
            ),
        )
        mailbox = await call(sync, "create_mailbox", MailboxSpec.user("x@example.com").on_profile(creds.id))
        with pytest.raises(mailsync.ValidationError) as e:
            await call(sync, "connect", mailbox.id)
        assert e.value.field == "authentication"
        # Without an issuer override, Gmail OAuth profiles use Google's built-in
        # endpoints: connect needs no network.
        user = await call(sync, "create_mailbox", MailboxSpec.user("t@example.com").on_profile(gmail.id))
        request = await call(sync, "connect", user.id)
        assert request.url.startswith("https://accounts.google.com/o/oauth2/v2/auth?")
        assert SECRET not in request.url and SECRET not in repr(request)
        assert (await call(sync, "get_mailbox", user.id)).connection.state == "awaiting_consent"
        await call(sync, "close")

    asyncio.run(main())
