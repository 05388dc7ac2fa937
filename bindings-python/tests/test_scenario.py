"""The four-language scenario, run on both the async and the blocking API."""

import asyncio
import json

import pytest

import mailsync
from mailsync import (
    CapacityExceededError,
    MailboxSpec,
    MailsyncError,
    OAuthApp,
    ServerProfile,
    ValidationError,
)

from conftest import CLIENT_ID, ENV_URL, REDIRECT, SECRET, call

FLAVOURS = {"async": mailsync.MailSync, "blocking": mailsync.blocking.MailSync}


def leaks(text: str) -> bool:
    return SECRET in text or SECRET[:12] in text


async def scenario(flavour, db_path):
    sync = await call(flavour, "open_sqlite", db_path)
    assert isinstance(sync, flavour)

    app = OAuthApp.google(CLIENT_ID, SECRET).for_environment(ENV_URL)
    assert app.redirect_uri == REDIRECT
    assert app.javascript_origins == [ENV_URL]
    assert "example.com" in app.consent_screen.authorized_domains

    profile = await call(
        sync, "create_profile", ServerProfile.gmail("Gmail - sales", app, default_for_new_mailboxes=True)
    )
    assert profile.default_for_new_mailboxes is True
    assert profile.server_type == "gmail"
    assert (profile.incoming.protocol, profile.incoming.host, profile.incoming.port, profile.incoming.security) == (
        "imap",
        "imap.gmail.com",
        993,
        "tls",
    )
    assert (profile.outgoing.host, profile.outgoing.port, profile.outgoing.security) == (
        "smtp.gmail.com",
        587,
        "start_tls",
    )
    assert profile.mailbox_capacity == 100
    assert profile.oauth_app.redirect_uri == REDIRECT
    assert profile.has_client_secret

    # The secret is absent from every rendering of the app and the profile.
    renderings = [
        repr(app),
        str(app),
        app.to_json(),
        json.dumps(app.to_dict()),
        repr(profile),
        str(profile),
        profile.to_json(),
        json.dumps(profile.to_dict()),
        repr(profile.authentication),
        json.dumps(profile.authentication.to_dict()),
        repr(profile.oauth_app),
    ]
    for text in renderings:
        assert not leaks(text), text
    assert CLIENT_ID in repr(app)  # the renderings are real, not empty
    assert json.loads(profile.to_json())["name"] == "Gmail - sales"

    # 100 mailboxes land on the default profile; the 101st is refused.
    for i in range(100):
        mailbox = await call(sync, "create_mailbox", MailboxSpec.user(f"user{i:03}@example.com"))
        assert mailbox.profile_id == profile.id
    with pytest.raises(CapacityExceededError) as caught:
        await call(sync, "create_mailbox", MailboxSpec.user("user100@example.com"))
    err = caught.value
    assert isinstance(err, MailsyncError)
    assert err.code == "capacity_exceeded"
    assert err.transient is False
    assert err.field is None
    assert "profile" in err.next_action
    assert "100" in str(err)

    # http:// redirect URIs are refused with the field named.
    with pytest.raises(ValidationError) as caught:
        OAuthApp.google(CLIENT_ID, SECRET).for_environment("http://contoso.crm.example.com")
    assert caught.value.code == "validation"
    assert caught.value.field == "environment_url"
    bad_app = OAuthApp.google(CLIENT_ID, SECRET).with_redirect_uri("http://contoso.crm.example.com/callback")
    with pytest.raises(ValidationError) as caught:
        await call(sync, "create_profile", ServerProfile.gmail("Gmail - http", bad_app))
    assert caught.value.code == "validation"
    assert caught.value.field == "redirect_uris[0]"
    assert not leaks(str(caught.value)) and not leaks(repr(caught.value))

    # Reopen: a new object on the same file finds everything.
    reopened = await call(flavour, "open_sqlite", db_path)
    found = await call(reopened, "find_profile", "gmail - SALES")
    assert found.id == profile.id
    assert found.default_for_new_mailboxes is True
    assert found.has_client_secret  # the sealed secret was opened with the key file
    assert found.oauth_app.redirect_uri == REDIRECT
    default = await call(reopened, "default_profile")
    assert default is not None and default.id == profile.id
    mailboxes = await call(reopened, "list_mailboxes", profile.id)
    assert [m.email for m in mailboxes] == [f"user{i:03}@example.com" for i in range(100)]
    assert found == profile

    # The secret is not in the database files in clear either.
    for file in db_path.parent.iterdir():
        assert SECRET.encode() not in file.read_bytes(), file.name
    assert db_path.with_name("mailsync.db.key").stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize("name", FLAVOURS)
def test_scenario(name, db_path):
    asyncio.run(scenario(FLAVOURS[name], db_path))


def test_blocking_api_without_asyncio(db_path):
    """Scripts use the blocking flavour with no event loop at all."""
    from mailsync.blocking import MailSync

    sync = MailSync.open_sqlite(str(db_path))
    app = OAuthApp.google(CLIENT_ID, SECRET).for_environment(ENV_URL)
    profile = sync.create_profile(ServerProfile.gmail("Blocking", app).with_mailbox_capacity(2))
    spec = MailboxSpec("Alice@Example.com", name="Alice", profile_id=profile.id)
    alice = sync.create_mailbox(spec)
    assert alice.email == "alice@example.com"
    assert alice.name == "Alice"
    assert sync.get_mailbox(alice.id) == alice
    assert sync.find_mailbox("ALICE@example.com").id == alice.id
    assert sync.default_profile() is None
    assert sync.set_default_profile(profile.id).default_for_new_mailboxes
    sync.create_mailbox(MailboxSpec.user("bob@example.com"))
    with pytest.raises(CapacityExceededError):
        sync.create_mailbox(MailboxSpec.user("carol@example.com"))
    again = MailSync.open_sqlite(db_path)
    assert [m.email for m in again.list_mailboxes()] == ["alice@example.com", "bob@example.com"]
    assert again.default_profile().id == profile.id


def test_async_operations_return_awaitables_and_run_concurrently():
    """Async calls are awaitables on the binding's runtime; concurrent creates respect capacity."""

    async def main():
        sync = mailsync.MailSync.in_memory()
        app = OAuthApp.google(CLIENT_ID, SECRET).for_environment(ENV_URL)
        pending = sync.create_profile(ServerProfile.gmail("Small", app, default_for_new_mailboxes=True))
        assert asyncio.isfuture(pending) or asyncio.iscoroutine(pending)
        profile = await pending
        small = profile.with_mailbox_capacity(5)
        await sync.update_profile(small)
        results = await asyncio.gather(
            *(sync.create_mailbox(MailboxSpec.user(f"u{i}@example.com")) for i in range(12)),
            return_exceptions=True,
        )
        created = [r for r in results if isinstance(r, mailsync.Mailbox)]
        refused = [r for r in results if isinstance(r, CapacityExceededError)]
        assert (len(created), len(refused)) == (5, 7), results
        assert len(await sync.list_mailboxes(profile.id)) == 5

    asyncio.run(main())


def test_async_call_outside_event_loop_is_a_clear_error():
    sync = mailsync.MailSync.in_memory()
    with pytest.raises(RuntimeError):
        sync.list_profiles()
