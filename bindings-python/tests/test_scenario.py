"""The four-language scenario, run on both the async and the blocking API."""

import asyncio

import pytest

import mailsync
from mailsync import CapacityExceededError, MailsyncError, StoreLocation, ValidationError

from conftest import CLIENT_ID, ENV_URL, FLAVOURS, REDIRECT, SECRET, app, call, open_store, user


def leaks(text: str) -> bool:
    return SECRET in text or SECRET[:12] in text


async def scenario(flavour, db_path):
    sync = await open_store(flavour, StoreLocation.sqlite(db_path))
    assert isinstance(sync, flavour)
    d = sync.directory

    oauth = app()
    assert oauth.redirect_uris == [REDIRECT]
    assert oauth.javascript_origins == [ENV_URL]
    assert "example.com" in oauth.consent_screen.authorized_domains

    new = mailsync.gmail_profile("Gmail - sales", oauth)
    new.default_for_new_mailboxes = True
    profile = await call(d, "create_profile", new)
    assert profile.default_for_new_mailboxes is True
    assert profile.server_type == "gmail"
    incoming = profile.incoming
    assert (incoming.protocol, incoming.endpoint.host, incoming.endpoint.port, incoming.endpoint.security) == (
        "imap", "imap.gmail.com", 993, "tls",
    )
    assert (profile.outgoing.host, profile.outgoing.port, profile.outgoing.security) == ("smtp.gmail.com", 587, "start_tls")
    assert profile.mailbox_capacity == 100
    assert profile.authentication.app.redirect_uris == [REDIRECT]
    assert profile.authentication.app.client_secret == "********"

    # The secret is absent from every rendering of the app and the profile.
    renderings = [repr(oauth), str(oauth), repr(profile), str(profile), repr(profile.authentication),
                  repr(profile.authentication.app), str(oauth.client_secret)]
    for text in renderings:
        assert not leaks(text), text
    assert CLIENT_ID in repr(oauth) and "Gmail - sales" in repr(profile)  # the renderings are real

    # 100 mailboxes land on the default profile; the 101st is refused.
    for i in range(100):
        mailbox = await call(d, "create_mailbox", user(f"user{i:03}@example.com"))
        assert mailbox.profile_id == profile.id
    with pytest.raises(CapacityExceededError) as caught:
        await call(d, "create_mailbox", user("user100@example.com"))
    err = caught.value
    assert isinstance(err, MailsyncError)
    assert (err.code, err.transient, err.field) == ("capacity_exceeded", False, None)
    assert "profile" in err.next_action and "100" in str(err)

    # http:// redirect URIs are refused with the field named.
    with pytest.raises(ValidationError) as caught:
        mailsync.app_for_environment(mailsync.google_app(CLIENT_ID, SECRET), "http://contoso.crm.example.com", None)
    assert (caught.value.code, caught.value.field) == ("validation", "environment_url")
    bad_app = mailsync.google_app(CLIENT_ID, SECRET)
    bad_app.redirect_uris = ["http://contoso.crm.example.com/callback"]
    with pytest.raises(ValidationError) as caught:
        await call(d, "create_profile", mailsync.gmail_profile("Gmail - http", bad_app))
    assert (caught.value.code, caught.value.field) == ("validation", "redirect_uris[0]")
    assert not leaks(str(caught.value)) and not leaks(repr(caught.value))
    await call(sync, "close")

    # Reopen: a new object on the same file finds everything.
    reopened = await open_store(flavour, StoreLocation.sqlite(db_path))
    found = await call(reopened.directory, "find_profile", "gmail - SALES")
    assert found.id == profile.id and found.default_for_new_mailboxes is True
    assert found.authentication.app.client_secret == "********"  # opened with the key file
    assert found.authentication.app.redirect_uris == [REDIRECT]
    default = await call(reopened.directory, "default_profile")
    assert default is not None and default.id == profile.id
    mailboxes = await call(reopened.directory, "list_mailboxes", profile.id)
    assert [m.email for m in mailboxes] == [f"user{i:03}@example.com" for i in range(100)]
    assert await call(reopened.directory, "mailbox_count", profile.id) == 100
    assert found == profile
    await call(reopened, "close")

    # The secret is not in the database files in clear either.
    for file in db_path.parent.iterdir():
        assert SECRET.encode() not in file.read_bytes(), file.name
    assert db_path.with_name("mailsync.db.key").stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize("name", FLAVOURS)
def test_scenario(name, db_path):
    asyncio.run(scenario(FLAVOURS[name], db_path))


@pytest.fixture
def db_path(tmp_path):
    return tmp_path / "mailsync.db"


def test_blocking_api_without_asyncio(db_path):
    """Scripts use the blocking flavour with no event loop at all."""
    from mailsync.blocking import Directory, MailSync

    sync = MailSync.open(StoreLocation.sqlite(str(db_path)), mailsync.default_options())
    d = sync.directory
    assert isinstance(d, Directory)
    small = mailsync.gmail_profile("Blocking", app())
    small.mailbox_capacity = 2
    profile = d.create_profile(small)
    spec = user("Alice@Example.com", profile.id)
    spec.name = "Alice"
    alice = d.create_mailbox(spec)
    assert (alice.email, alice.name) == ("alice@example.com", "Alice")
    assert d.get_mailbox(alice.id) == alice
    assert d.find_mailbox("ALICE@example.com").id == alice.id
    assert d.default_profile() is None
    assert d.set_default_profile(profile.id).default_for_new_mailboxes
    d.create_mailbox(user("bob@example.com"))
    with pytest.raises(CapacityExceededError):
        d.create_mailbox(user("carol@example.com"))
    again = MailSync.open(StoreLocation.sqlite(db_path), mailsync.default_options())
    assert [m.email for m in again.directory.list_mailboxes(None)] == ["alice@example.com", "bob@example.com"]
    assert again.directory.default_profile().id == profile.id


def test_async_operations_return_awaitables_and_run_concurrently():
    """Async calls are awaitables on the binding's runtime; concurrent creates respect capacity."""

    async def main():
        opening = mailsync.MailSync.open(StoreLocation.memory(), mailsync.default_options())
        assert asyncio.isfuture(opening)
        sync = await opening
        new = mailsync.gmail_profile("Small", app())
        new.default_for_new_mailboxes = True
        profile = await sync.directory.create_profile(new)
        profile.mailbox_capacity = 5
        await sync.directory.update_profile(profile)
        results = await asyncio.gather(
            *(sync.directory.create_mailbox(user(f"u{i}@example.com")) for i in range(12)),
            return_exceptions=True,
        )
        created = [r for r in results if isinstance(r, mailsync.Mailbox)]
        refused = [r for r in results if isinstance(r, CapacityExceededError)]
        assert (len(created), len(refused)) == (5, 7), results
        assert len(await sync.directory.list_mailboxes(profile.id)) == 5
        await sync.close()

    asyncio.run(main())


def test_async_call_outside_event_loop_is_a_clear_error():
    with pytest.raises(RuntimeError):
        mailsync.MailSync.open(StoreLocation.memory(), mailsync.default_options())
    sync = mailsync.blocking.MailSync.open(StoreLocation.memory(), mailsync.default_options())
    assert sync.directory.list_profiles() == []
