"""The rest of the directory API, secrets and persistence details."""

import json
from datetime import datetime, timedelta, timezone

import pytest

import mailsync
from mailsync import (
    AlreadyExistsError,
    Authentication,
    CapacityExceededError,
    Endpoint,
    IncomingEndpoint,
    MailboxCredentials,
    MailboxSpec,
    NotATestUserError,
    OAuthApp,
    Owner,
    ProcessingOptions,
    ProfileInUseError,
    SealKey,
    SealKeyMismatchError,
    ServerProfile,
    ValidationError,
)
from mailsync.blocking import MailSync

from conftest import CLIENT_ID, ENV_URL, SECRET


def app():
    return OAuthApp.google(CLIENT_ID, SECRET).for_environment(ENV_URL)


def test_profile_lifecycle_and_mailbox_moves():
    sync = MailSync.in_memory()
    first = sync.create_profile(ServerProfile.gmail("First", app(), default_for_new_mailboxes=True))
    second = sync.create_profile(ServerProfile.gmail("Second", app()).use_pop3().use_smtp_tls_465())
    assert (second.incoming.protocol, second.incoming.host, second.incoming.port) == ("pop3", "pop.gmail.com", 995)
    assert (second.outgoing.port, second.outgoing.security) == (465, "tls")
    with pytest.raises(AlreadyExistsError):
        sync.create_profile(ServerProfile.gmail("first", app()))
    assert [p.name for p in sync.list_profiles()] == ["First", "Second"]

    mailbox = sync.create_mailbox(MailboxSpec.user("alice@example.com"))
    assert mailbox.profile_id == first.id
    with pytest.raises(AlreadyExistsError):
        sync.create_mailbox(MailboxSpec.user("ALICE@example.com"))
    with pytest.raises(ProfileInUseError) as caught:
        sync.delete_profile(first.id)
    assert caught.value.code == "profile_in_use"

    moved = sync.assign_profile(mailbox.id, second.id)
    assert moved.profile_id == second.id
    moved.name = "Alice A."
    moved.incoming_enabled = False
    updated = sync.update_mailbox(moved)
    assert sync.get_mailbox(mailbox.id) == updated
    assert updated.name == "Alice A." and updated.incoming_enabled is False
    assert [m.email for m in sync.list_mailboxes(second.id)] == ["alice@example.com"]
    assert sync.list_mailboxes(first.id) == []

    sync.delete_profile(first.id)
    sync.delete_mailbox(mailbox.id)
    assert sync.list_mailboxes() == []
    assert sync.set_default_profile(second.id).default_for_new_mailboxes

    second.name = "Renamed"
    second.processing = ProcessingOptions(connection_timeout_secs=30)
    stored = sync.update_profile(second)
    assert sync.get_profile(second.id).name == "Renamed"
    assert stored.processing.connection_timeout_secs == 30


def test_capacity_spill_over_and_lowering():
    sync = MailSync.in_memory()
    small = sync.create_profile(ServerProfile.gmail("Small", app(), default_for_new_mailboxes=True).with_mailbox_capacity(1))
    sibling = sync.create_profile(ServerProfile.gmail("Sibling", app()))
    sync.create_mailbox(MailboxSpec.user("a@example.com"))
    with pytest.raises(CapacityExceededError):
        sync.create_mailbox(MailboxSpec.user("b@example.com"))
    spilled = sync.create_mailbox(MailboxSpec.user("b@example.com").with_allow_spill_over())
    assert spilled.profile_id == sibling.id
    assert MailboxSpec("c@example.com", allow_spill_over=True).allow_spill_over
    sync.create_mailbox(MailboxSpec.user("c@example.com").on_profile(sibling.id))
    lowered = sync.get_profile(sibling.id)
    lowered.mailbox_capacity = 1
    with pytest.raises(ValidationError) as caught:
        sync.update_profile(lowered)
    assert caught.value.field == "mailbox_capacity"
    assert small.mailbox_capacity == 1


def test_testing_apps_accept_only_test_users_and_warn():
    sync = MailSync.in_memory()
    testing = app().with_audience("external", "testing").with_test_users(["Tester@Example.com"])
    assert testing.consent_screen.test_users == ["tester@example.com"]
    assert testing.consent_screen.is_external_testing
    [warning] = testing.warnings()
    assert warning.code == "testing_refresh_token_expiry" and "7 days" in warning.message
    testing.ensure_may_connect("tester@example.com")
    with pytest.raises(NotATestUserError):
        testing.ensure_may_connect("stranger@example.com")
    sync.create_profile(ServerProfile.gmail("Testing", testing, default_for_new_mailboxes=True))
    with pytest.raises(NotATestUserError) as caught:
        sync.create_mailbox(MailboxSpec.user("stranger@example.com"))
    assert caught.value.code == "not_a_test_user"
    assert sync.create_mailbox(MailboxSpec.user("tester@example.com")).email == "tester@example.com"
    assert app().with_audience("external", "production").warnings() == []


def test_enum_strings_round_trip():
    for security in ("tls", "start_tls", "plaintext"):
        assert Endpoint("mail.example.com", 1, security).security == security
    for protocol in ("imap", "pop3"):
        assert IncomingEndpoint(protocol, Endpoint("h.example.com", 1, "tls")).protocol == protocol
    for user_type in ("internal", "external"):
        for status in ("testing", "production"):
            screen = app().with_audience(user_type, status).consent_screen
            assert (screen.user_type, screen.publishing_status) == (user_type, status)
    spec = MailboxSpec("x@example.com")
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


def test_generic_profiles_and_password_redaction():
    sync = MailSync.in_memory()
    password = "hunter2-PASSWORD-leak-check"
    auth = Authentication.credentials_in_profile("svc-user", password)
    assert auth.kind == "credentials_in_profile" and auth.has_password and not auth.is_oauth
    profile = ServerProfile.generic(
        "Local",
        IncomingEndpoint("imap", Endpoint("127.0.0.1", 1143, "plaintext")),
        Endpoint("localhost", 1025, "plaintext"),
        auth,
    )
    with pytest.raises(ValidationError):
        sync.create_profile(profile)
    profile.allow_plaintext_on_loopback = True
    stored = sync.create_profile(profile)
    assert stored.server_type == "imap_smtp" and stored.incoming.endpoint.is_loopback
    assert stored.authentication.username == "svc-user" and not stored.has_client_secret
    creds = MailboxCredentials("bob", password)
    box = sync.create_mailbox(MailboxSpec("bob@example.com", owner=Owner.queue("Support"), credentials=creds, profile_id=stored.id))
    assert box.owner.kind == "queue" and box.owner.name == "Support"
    assert box.credentials.username == "bob" and box.credentials.has_password
    for text in (repr(auth), repr(stored), stored.to_json(), json.dumps(stored.to_dict()), repr(box), box.to_json(),
                 json.dumps(box.to_dict()), repr(creds), repr(box.credentials)):
        assert password not in text, text
    provider = Authentication.oauth_provider("https://login.example.com", app())
    assert provider.issuer == "https://login.example.com" and provider.app.has_client_secret
    assert SECRET not in repr(provider)
    assert Authentication.credentials_per_mailbox().kind == "credentials_per_mailbox"


def test_mailbox_record_fields():
    sync = MailSync.in_memory()
    box = sync.create_mailbox(MailboxSpec.forward("fwd@example.com"))
    assert box.profile_id is None and box.is_forward
    assert (box.incoming_delivery, box.outgoing_delivery) == ("forward_mailbox", "none")
    assert (box.incoming_enabled, box.outgoing_enabled) == (True, False)
    assert box.connection.state == "not_connected" and box.connection.account is None
    assert box.incoming_test.status == "not_run" and box.incoming_test.outcome is None
    assert box.alerts == [] and box.approval == "approved"
    assert box.created_at.tzinfo is not None
    assert abs(datetime.now(timezone.utc) - box.created_at) < timedelta(minutes=5)
    queue = sync.create_mailbox(MailboxSpec.queue("q@example.com", "Support"))
    assert queue.owner.kind == "queue"
    assert json.loads(queue.to_json())["owner"] == {"kind": "queue", "name": "Support"}


def test_processing_options_datetime_round_trip():
    after = datetime(2025, 3, 1, 12, 30, tzinfo=timezone(timedelta(hours=2)))
    options = ProcessingOptions(process_email_received_after=after, min_polling_interval_minutes=0)
    assert options.process_email_received_after == after
    assert options.min_polling_interval_minutes == 0
    assert ProcessingOptions().connection_timeout_secs == 60
    assert ProcessingOptions().process_email_received_after is None


def test_seal_keys(tmp_path):
    key = SealKey.generate()
    assert repr(key) == "SealKey(<redacted>)"
    path = tmp_path / "k.db"
    sync = MailSync.open_sqlite_with_key(path, key)
    sync.create_profile(ServerProfile.gmail("Keyed", app()))
    assert MailSync.open_sqlite_with_key(path, key).find_profile("Keyed").has_client_secret
    with pytest.raises(SealKeyMismatchError) as caught:
        other = MailSync.open_sqlite_with_key(path, SealKey.from_bytes(bytes(32)))
        other.list_profiles()
    assert caught.value.code == "seal_key_mismatch"
    key_file = tmp_path / "made.key"
    made = SealKey.load_or_create(key_file)
    assert key_file.stat().st_size == 32 and key_file.stat().st_mode & 0o777 == 0o600
    assert repr(made) == repr(SealKey.from_file(key_file))
