"""The directory API, records, secrets and persistence details."""

from datetime import datetime, timedelta, timezone

import pytest

import mailsync
from mailsync import (
    AlreadyExistsError,
    Authentication,
    CapacityExceededError,
    ConflictError,
    Endpoint,
    IncomingEndpoint,
    MailboxCredentials,
    NotATestUserError,
    Owner,
    ProcessingOptions,
    ProfileInUseError,
    SealKey,
    SealKeyMismatchError,
    StoreLocation,
    ValidationError,
)
from mailsync.blocking import MailSync

from conftest import SECRET, app, gmail, user


def memory():
    return MailSync.open(StoreLocation.memory(), mailsync.default_options()).directory


def test_profile_lifecycle_and_mailbox_moves():
    d = memory()
    first = d.create_profile(gmail("First", default=True))
    second = d.create_profile(mailsync.profile_use_smtp_tls_465(mailsync.profile_use_pop3(gmail("Second"))))
    incoming = second.incoming
    assert (incoming.protocol, incoming.endpoint.host, incoming.endpoint.port) == ("pop3", "pop.gmail.com", 995)
    assert (second.outgoing.port, second.outgoing.security) == (465, "tls")
    with pytest.raises(AlreadyExistsError):
        d.create_profile(gmail("first"))
    assert [p.name for p in d.list_profiles()] == ["First", "Second"]

    mailbox = d.create_mailbox(user("alice@example.com"))
    assert mailbox.profile_id == first.id and d.mailbox_count(first.id) == 1
    with pytest.raises(AlreadyExistsError):
        d.create_mailbox(user("ALICE@example.com"))
    with pytest.raises(ProfileInUseError) as caught:
        d.delete_profile(first.id)
    assert caught.value.code == "profile_in_use"

    moved = d.move_mailbox(mailbox.id, second.id)
    assert moved.profile_id == second.id
    moved.name = "Alice A."
    moved.incoming_delivery = "none"
    updated = d.update_mailbox(moved)
    assert d.get_mailbox(mailbox.id) == updated
    assert updated.name == "Alice A." and updated.incoming_delivery == "none"
    assert [m.email for m in d.list_mailboxes(second.id)] == ["alice@example.com"]
    assert d.list_mailboxes(first.id) == []

    d.delete_profile(first.id)
    d.delete_mailbox(mailbox.id)
    assert d.list_mailboxes(None) == []
    second = d.set_default_profile(second.id)
    assert second.default_for_new_mailboxes

    second.name = "Renamed"
    processing = second.processing
    processing.connection_timeout_secs = 30
    second.processing = processing  # nested records are copies: assign the changed one back
    stored = d.update_profile(second)
    assert d.get_profile(second.id).name == "Renamed"
    assert stored.processing.connection_timeout_secs == 30 and stored.version > second.version


def test_updates_compare_versions():
    d = memory()
    profile = d.create_profile(gmail("Versioned"))
    mine, theirs = d.get_profile(profile.id), d.get_profile(profile.id)
    theirs.name = "Theirs"
    d.update_profile(theirs)
    mine.name = "Mine"
    with pytest.raises(ConflictError) as caught:
        d.update_profile(mine)
    assert caught.value.code == "conflict" and d.get_profile(profile.id).name == "Theirs"
    box = d.create_mailbox(user("v@example.com", profile.id))
    stale = d.get_mailbox(box.id)
    d.update_mailbox(d.get_mailbox(box.id))
    with pytest.raises(ConflictError):
        d.update_mailbox(stale)


def test_capacity_spill_over_and_lowering():
    d = memory()
    small = d.create_profile(gmail("Small", default=True, mailbox_capacity=1))
    sibling = d.create_profile(gmail("Sibling"))
    d.create_mailbox(user("a@example.com"))
    with pytest.raises(CapacityExceededError):
        d.create_mailbox(user("b@example.com"))
    spill = user("b@example.com")
    spill.allow_spill_over = True
    assert d.create_mailbox(spill).profile_id == sibling.id
    d.create_mailbox(user("c@example.com", sibling.id))
    lowered = d.get_profile(sibling.id)
    lowered.mailbox_capacity = 1
    with pytest.raises(ValidationError) as caught:
        d.update_profile(lowered)
    assert caught.value.field == "mailbox_capacity"
    assert small.mailbox_capacity == 1


def test_testing_apps_accept_only_test_users_and_warn():
    d = memory()
    testing = mailsync.app_with_test_users(mailsync.app_with_audience(app(), "external", "testing"), ["Tester@Example.com"])
    assert testing.consent_screen.test_users == ["tester@example.com"]
    [warning] = mailsync.app_warnings(testing)
    assert warning.code == "testing_refresh_token_expiry" and "7 days" in warning.message
    mailsync.app_ensure_may_connect(testing, "tester@example.com")
    with pytest.raises(NotATestUserError):
        mailsync.app_ensure_may_connect(testing, "stranger@example.com")
    profile = mailsync.gmail_profile("Testing", testing)
    profile.default_for_new_mailboxes = True
    d.create_profile(profile)
    with pytest.raises(NotATestUserError) as caught:
        d.create_mailbox(user("stranger@example.com"))
    assert caught.value.code == "not_a_test_user"
    assert d.create_mailbox(user("tester@example.com")).email == "tester@example.com"
    assert mailsync.app_warnings(mailsync.app_with_audience(app(), "external", "production")) == []


def test_enum_strings_round_trip():
    for security in ("tls", "start_tls", "plaintext"):
        assert Endpoint("mail.example.com", 1, security).security == security
    for protocol in ("imap", "pop3"):
        assert IncomingEndpoint(protocol, Endpoint("h.example.com", 1, "tls")).protocol == protocol
    for user_type in ("internal", "external"):
        for status in ("testing", "production"):
            screen = mailsync.app_with_audience(app(), user_type, status).consent_screen
            assert (screen.user_type, screen.publishing_status) == (user_type, status)
    spec = user("x@example.com")
    for value in ("none", "server_side_sync", "email_router", "forward_mailbox"):
        spec.incoming_delivery = value
        assert spec.incoming_delivery == value
    for value in ("none", "server_side_sync", "email_router"):
        spec.outgoing_delivery = value
        assert spec.outgoing_delivery == value
    for value in ("empty", "approved", "pending_approval", "rejected"):
        spec.approval = value
        assert spec.approval == value
    assert app().application_type == "web"
    with pytest.raises(ValueError):
        spec.approval = "maybe"


def test_generic_profiles_and_password_redaction():
    d = memory()
    password = "hunter2-PASSWORD-leak-check"
    auth = Authentication.CredentialsInProfile("svc-user", password)
    assert isinstance(auth, Authentication) and auth.password == "********"
    profile = mailsync.generic_profile(
        "Local",
        IncomingEndpoint("imap", Endpoint("127.0.0.1", 1143, "plaintext")),
        Endpoint("localhost", 1025, "plaintext"),
        auth,
    )
    with pytest.raises(ValidationError):
        d.create_profile(profile)
    profile.allow_plaintext_on_loopback = True
    stored = d.create_profile(profile)
    assert stored.server_type == "imap_smtp"
    assert stored.authentication.username == "svc-user" and stored.authentication.password == "********"
    creds = MailboxCredentials("bob", password)
    spec = user("bob@example.com", stored.id)
    spec.owner, spec.credentials = Owner.Queue("Support"), creds
    box = d.create_mailbox(spec)
    assert isinstance(box.owner, Owner.Queue) and box.owner.name == "Support"
    assert box.credentials.username == "bob" and box.credentials.password == "********"
    texts = [repr(auth), str(auth), repr(stored), str(stored), repr(box), repr(creds), repr(box.credentials), repr(spec)]
    assert "Secret([REDACTED])" in repr(auth)  # the renderings are real
    for text in texts:
        assert password not in text, text
    provider = Authentication.OAuthProvider("https://login.example.com", app(), [])
    assert provider.issuer == "https://login.example.com" and provider.app.client_secret == "********"
    assert SECRET not in repr(provider) and SECRET not in str(provider)
    assert isinstance(Authentication.CredentialsPerMailbox(), Authentication)


def test_secrets_are_kept_when_written_back():
    d = memory()
    profile = d.create_profile(gmail("Keep"))
    profile.name = "Kept"
    assert profile.authentication.app.client_secret == "********"
    stored = d.update_profile(profile)  # the mask written back keeps the stored secret
    assert stored.name == "Kept" and stored.authentication.app.client_secret == "********"
    masked = gmail("Masked")
    masked.authentication = Authentication.GmailOAuth(mailsync.google_app(app().client_id, "********"))
    with pytest.raises(ValidationError) as caught:
        d.create_profile(masked)
    assert caught.value.field == "client_secret"


def test_mailbox_records_and_state():
    sync = MailSync.open(StoreLocation.memory(), mailsync.default_options())
    d = sync.directory
    box = d.create_mailbox(mailsync.forward_mailbox("fwd@example.com"))
    assert box.profile_id is None
    assert (box.incoming_delivery, box.outgoing_delivery) == ("forward_mailbox", "none")
    assert box.approval == "approved" and box.version > 0
    assert box.created_at.tzinfo is not None
    assert abs(datetime.now(timezone.utc) - box.created_at) < timedelta(minutes=5)
    state = d.state(box.id)
    assert state.mailbox_id == box.id and state.pending_consent is None
    assert isinstance(state.grant, mailsync.GrantStatus.NotConnected)
    assert isinstance(state.incoming.status, mailsync.DirectionStatus.NotTested)
    assert isinstance(state.incoming.last_test, mailsync.TestStatus.NotRun)
    assert d.alerts(box.id) == []
    status = d.status(box.id)
    assert (status.mailbox, status.state, status.alerts) == (box, state, [])
    queue = d.create_mailbox(mailsync.queue_mailbox("q@example.com", "Support"))
    assert queue.owner == Owner.Queue("Support") and isinstance(queue.owner, Owner.Queue)
    assert d.create_mailbox(user("u@example.com")).owner == Owner.User("u@example.com")


def test_processing_options_datetime_round_trip():
    after = datetime(2025, 3, 1, 12, 30, tzinfo=timezone(timedelta(hours=2)))
    options = gmail("Dates").processing
    assert options.connection_timeout_secs == 60 and options.process_email_received_after is None
    options.process_email_received_after = after
    options.min_polling_interval_minutes = 0
    assert options.process_email_received_after == after
    assert options.min_polling_interval_minutes == 0
    with pytest.raises(ValueError):
        options.process_email_received_after = datetime(2024, 1, 1)  # naive


def test_seal_keys(tmp_path):
    key = SealKey.generate()
    path = tmp_path / "k.db"
    sync = MailSync.open(StoreLocation.sqlite(path, key), mailsync.default_options())
    sync.directory.create_profile(gmail("Keyed"))
    sync.close()
    again = MailSync.open(StoreLocation.sqlite(path, key), mailsync.default_options())
    assert again.directory.find_profile("Keyed").authentication.app.client_secret == "********"
    again.close()
    assert not (tmp_path / "k.db.key").exists()  # the host's key, no key file
    with pytest.raises(SealKeyMismatchError) as caught:
        other = MailSync.open(StoreLocation.sqlite(path, SealKey.from_bytes(bytes(32))), mailsync.default_options())
        other.directory.list_profiles()
    assert caught.value.code == "seal_key_mismatch"
    key_file = tmp_path / "made.key"
    SealKey.load_or_create(key_file)
    assert key_file.stat().st_size == 32 and key_file.stat().st_mode & 0o777 == 0o600
    SealKey.from_file(key_file)


def test_seal_key_bytes_never_show(tmp_path):
    import base64
    import os
    import pickle

    raw = os.urandom(32)
    key = SealKey.from_bytes(raw)
    location = StoreLocation.sqlite(tmp_path / "x.db", key)
    forms = [raw.hex(), raw.hex().upper(), repr(raw), base64.b64encode(raw).decode(), raw.decode("latin-1"),
             str(list(raw))[1:-1]]
    texts = [repr(key), str(key), repr(location), str(location), repr(StoreLocation.sqlite(tmp_path / "y.db"))]
    assert "redacted" in repr(key) and "x.db" in repr(location)
    for text in texts:
        for form in forms:
            assert form not in text, (form, text)
    with pytest.raises(TypeError):
        pickle.dumps(key)
    with pytest.raises(TypeError):
        pickle.dumps(location)
