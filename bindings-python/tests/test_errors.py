"""Error-code parity, garbage inputs and panic containment."""

import ast
import asyncio
import pathlib
import uuid
from datetime import datetime

import pytest

import mailsync
from mailsync import (
    Endpoint,
    MailboxSpec,
    MailsyncError,
    NotFoundError,
    OAuthApp,
    ProcessingOptions,
    SealKey,
    ServerProfile,
    ValidationError,
)
from mailsync import _native

from conftest import CLIENT_ID, ENV_URL, SECRET

STUB = pathlib.Path(mailsync.__file__).with_name("_native.pyi")


def class_name(code: str) -> str:
    return "".join(part.capitalize() for part in code.split("_")) + "Error"


def stub_error_codes() -> list[str]:
    tree = ast.parse(STUB.read_text())
    for node in tree.body:
        if isinstance(node, ast.AnnAssign) and getattr(node.target, "id", None) == "ErrorCode":
            return [elt.value for elt in node.value.slice.elts]
    raise AssertionError("ErrorCode alias missing from the stub")


def test_error_codes_match_core_and_stub():
    codes = mailsync.error_codes()
    assert len(codes) == len(set(codes)) >= 33
    assert codes[0] == "validation" and codes[-1] == "internal"
    assert codes == stub_error_codes(), "update the ErrorCode literal in _native.pyi"


@pytest.mark.parametrize("code", mailsync.error_codes())
def test_every_code_has_its_exception_class(code):
    cls = getattr(mailsync, class_name(code))
    assert issubclass(cls, MailsyncError) and issubclass(cls, Exception)
    assert cls is not MailsyncError
    assert cls.code == code
    assert cls.__module__ == "mailsync"
    assert cls.__doc__
    assert mailsync.error_class(code) is cls
    err = _native._error_for_code(code, f"something about {code}")
    assert type(err) is cls
    assert (err.code, err.message, str(err), err.field) == (code, f"something about {code}", err.message, None)
    assert err.transient is cls.transient
    assert err.next_action == cls.next_action and err.next_action


def test_classes_are_distinct_and_transient_flags_follow_the_core():
    classes = {mailsync.error_class(c) for c in mailsync.error_codes()}
    assert len(classes) == len(mailsync.error_codes())
    transient = {c for c in mailsync.error_codes() if mailsync.error_class(c).transient}
    assert transient == {
        "store_unavailable",
        "provider_unavailable",
        "network",
        "timeout",
        "server_unavailable",
        "send_deferred",
    }
    assert mailsync.TimeoutError is not TimeoutError  # ours is not the builtin
    with pytest.raises(ValidationError) as caught:
        mailsync.error_class("no_such_code")
    assert caught.value.field == "code"


def test_validation_errors_carry_the_field():
    err = _native._error_for_code("validation", "must be between 1 and 65535", "incoming.port")
    assert isinstance(err, ValidationError)
    assert err.field == "incoming.port"
    assert err.message == "incoming.port: must be between 1 and 65535"


def test_panics_become_internal_errors():
    with pytest.raises(mailsync.InternalError) as caught:
        _native._panic_for_test()
    assert "deliberate test panic" in caught.value.message

    async def main():
        with pytest.raises(mailsync.InternalError):
            await _native._panic_for_test(awaitable=True)

    asyncio.run(main())
    assert mailsync.MailSync.in_memory() is not None  # the process is fine


def app():
    return OAuthApp.google(CLIENT_ID, SECRET).for_environment(ENV_URL)


def expect_validation(field, fn, *args, **kwargs):
    with pytest.raises(ValidationError) as caught:
        fn(*args, **kwargs)
    assert caught.value.code == "validation"
    assert caught.value.field == field, caught.value
    assert SECRET not in str(caught.value)
    return caught.value


def test_garbage_values_raise_typed_errors():
    sync = mailsync.blocking.MailSync.in_memory()
    expect_validation("client_id", OAuthApp.google("", "x").for_environment(ENV_URL).validate)
    expect_validation("client_secret", OAuthApp.google(CLIENT_ID, "").for_environment(ENV_URL).validate)
    expect_validation("environment_url", OAuthApp.google(CLIENT_ID, SECRET).for_environment, "")
    expect_validation("environment_url", OAuthApp.google(CLIENT_ID, SECRET).for_environment, "not a url")
    expect_validation("redirect_path", app().for_environment_with_path, ENV_URL, "no-slash")
    expect_validation("redirect_uris", OAuthApp.google(CLIENT_ID, SECRET).validate)
    expect_validation("user_type", app().with_audience, "everyone", "testing")
    expect_validation("publishing_status", app().with_audience, "external", "live")
    expect_validation("name", sync.create_profile, ServerProfile.gmail("", app()))
    expect_validation("name", sync.create_profile, ServerProfile.gmail("x" * 101, app()))
    for port in (70000, -1, 65536, 2**40):
        expect_validation("port", Endpoint, "imap.example.com", port, "tls")
    expect_validation("security", Endpoint, "imap.example.com", 993, "ssl")
    zero = ServerProfile.gmail("Zero", app()).with_incoming(Endpoint("imap.example.com", 0, "tls"))
    expect_validation("incoming.port", sync.create_profile, zero)
    no_host = ServerProfile.gmail("NoHost", app()).with_outgoing(Endpoint("", 587, "start_tls"))
    expect_validation("outgoing.host", sync.create_profile, no_host)
    plain = ServerProfile.gmail("Plain", app()).with_incoming(Endpoint("imap.example.com", 143, "plaintext"))
    expect_validation("incoming.security", sync.create_profile, plain)
    expect_validation("mailbox_capacity", sync.create_profile, ServerProfile.gmail("Big", app()).with_mailbox_capacity(101))
    expect_validation("mailbox_capacity", ServerProfile.gmail("Neg", app()).with_mailbox_capacity, -5)
    expect_validation("processing.connection_timeout_secs", ProcessingOptions, connection_timeout_secs=0)
    expect_validation("processing.max_concurrent_connections", ProcessingOptions, max_concurrent_connections=301)
    expect_validation(
        "processing.process_email_received_after", ProcessingOptions, process_email_received_after=datetime(2024, 1, 1)
    )
    expect_validation("seal_key", SealKey.from_bytes, b"too short")

    profile = sync.create_profile(ServerProfile.gmail("Good", app(), default_for_new_mailboxes=True))
    for email in ("", "not-an-email", "a@", "@example.com", "a b@example.com", "a\x00b@example.com", "x" * 300 + "@e.com"):
        expect_validation("email", sync.create_mailbox, MailboxSpec.user(email))
    expect_validation("incoming_delivery", MailboxSpec, "a@example.com", incoming_delivery="carrier_pigeon")
    expect_validation("outgoing_delivery", MailboxSpec.forward("f@example.com").__setattr__, "outgoing_delivery", "x")
    expect_validation("outgoing_delivery", sync.create_mailbox, MailboxSpec("f@example.com", incoming_delivery="forward_mailbox"))
    expect_validation("delete_after_processing", sync.create_mailbox, MailboxSpec("d@example.com", delete_after_processing=True))

    # Ids: garbage text is a validation error, a well-formed unknown id is not_found.
    expect_validation("profile_id", sync.get_profile, "not-a-uuid")
    expect_validation("profile_id", sync.get_profile, "")
    expect_validation("mailbox_id", sync.delete_mailbox, "💥")
    expect_validation("profile_id", MailboxSpec.user("a@example.com").on_profile, "nope")
    for fn in (sync.get_profile, sync.set_default_profile, sync.delete_profile):
        with pytest.raises(NotFoundError) as caught:
            fn(str(uuid.uuid4()))
        assert caught.value.code == "not_found"
    with pytest.raises(NotFoundError):
        sync.get_mailbox(str(uuid.uuid4()))
    with pytest.raises(NotFoundError):
        sync.find_profile("")
    with pytest.raises(NotFoundError):
        sync.find_mailbox("nobody@example.com")
    with pytest.raises(NotFoundError):
        sync.create_mailbox(MailboxSpec.user("a@example.com").on_profile(str(uuid.uuid4())))

    # The store is still usable after all that.
    assert [p.id for p in sync.list_profiles()] == [profile.id]
    assert sync.create_mailbox(MailboxSpec.user("ok@example.com")).profile_id == profile.id


def test_wrong_types_raise_type_error():
    sync = mailsync.blocking.MailSync.in_memory()
    with pytest.raises(TypeError):
        MailboxSpec.user(42)
    with pytest.raises(TypeError):
        sync.create_mailbox("user@example.com")
    with pytest.raises(TypeError):
        sync.create_profile(None)
    with pytest.raises(TypeError):
        Endpoint("imap.example.com", "993", "tls")
    with pytest.raises(TypeError):
        app().with_test_users("alice@example.com")  # a str is not a list of str
    with pytest.raises(TypeError):
        OAuthApp.google(CLIENT_ID, SECRET, "extra")
    with pytest.raises(TypeError):
        SealKey.from_bytes("not bytes")
    with pytest.raises(TypeError):
        ServerProfile.gmail("name", app(), True)  # default_for_new_mailboxes is keyword-only
    with pytest.raises(TypeError):
        mailsync.OAuthApp()  # built only through OAuthApp.google
    with pytest.raises(AttributeError):
        app().client_id = "other"  # value objects are immutable
    profile = ServerProfile.gmail("name", app())
    with pytest.raises(AttributeError):
        profile.incoming.port = 995  # nested values are immutable: assign a new one
    assert sync.list_profiles() == []


def test_async_errors_arrive_on_await():
    async def main():
        sync = mailsync.MailSync.in_memory()
        with pytest.raises(NotFoundError):
            await sync.get_profile(str(uuid.uuid4()))
        with pytest.raises(ValidationError) as caught:
            await sync.create_mailbox(MailboxSpec.user("garbage"))
        assert caught.value.field == "email"
        with pytest.raises(ValidationError):
            sync.get_profile("garbage")  # argument conversion fails before any await
        return await sync.list_profiles()

    assert asyncio.run(main()) == []


def test_store_errors(tmp_path):
    directory = tmp_path / "dir-not-file"
    directory.mkdir()
    with pytest.raises(MailsyncError) as caught:
        mailsync.blocking.MailSync.open_sqlite(directory)
    assert caught.value.code in {"store", "store_unavailable"}
    with pytest.raises(mailsync.StoreError):
        SealKey.from_file(tmp_path / "missing.key")
