"""Error classes (built from the core's code table), garbage inputs and panic containment."""

import asyncio
import uuid
from datetime import datetime

import pytest

import mailsync
from mailsync import Endpoint, MailsyncError, NotFoundError, SealKey, StoreLocation, ValidationError
from mailsync import _native

from conftest import CLIENT_ID, ENV_URL, SECRET, app, gmail, user


def class_name(code: str) -> str:
    return "".join(part.capitalize() for part in code.split("_")) + "Error"


def blocking_directory():
    return mailsync.blocking.MailSync.open(StoreLocation.memory(), mailsync.default_options()).directory


def test_error_classes_match_error_codes():
    codes = mailsync.error_codes()
    assert len(codes) == len(set(codes)) >= 36
    assert codes[0] == "validation" and codes[-1] == "internal"
    classes = {name for name in vars(_native) if name.endswith("Error") and name != "MailsyncError"}
    assert classes == {class_name(code) for code in codes}
    assert "MailsyncError" in mailsync.__all__ and all(class_name(c) in dir(mailsync) for c in codes)


@pytest.mark.parametrize("code", mailsync.error_codes())
def test_every_code_has_its_exception_class(code):
    cls = getattr(mailsync, class_name(code))
    assert issubclass(cls, MailsyncError) and issubclass(cls, Exception) and cls is not MailsyncError
    assert cls.code == code and cls.__module__ == "mailsync" and cls.__doc__
    assert cls.transient is mailsync.error_is_transient(code)
    assert cls.next_action == mailsync.error_next_action(code) and cls.next_action
    assert mailsync.error_class(code) is cls
    err = _native._error(code, f"something about {code}")
    assert type(err) is cls
    assert (err.code, err.message, str(err), err.field) == (code, f"something about {code}", err.message, None)
    assert err.transient is cls.transient and err.next_action == cls.next_action


def test_transient_flags_follow_the_core():
    codes = mailsync.error_codes()
    transient = {c for c in codes if mailsync.error_class(c).transient}
    assert transient == {c for c in codes if mailsync.error_is_transient(c)}
    assert {"store_unavailable", "provider_unavailable", "network", "timeout", "server_unavailable"} <= transient
    assert not {"validation", "token_revoked", "internal"} & transient
    assert mailsync.TimeoutError is not TimeoutError  # ours is not the builtin
    assert "TimeoutError" not in mailsync.__all__ and "Warning" not in mailsync.__all__
    with pytest.raises(ValueError):
        mailsync.error_class("no_such_code")


def test_validation_errors_carry_the_field():
    err = _native._error("validation", "must be between 1 and 65535", "incoming.port")
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
    assert blocking_directory().list_profiles() == []  # the process is fine


def expect_validation(field, fn, *args):
    with pytest.raises(ValidationError) as caught:
        fn(*args)
    assert caught.value.code == "validation"
    assert caught.value.field == field, caught.value
    assert SECRET not in str(caught.value) and SECRET not in repr(caught.value)
    return caught.value


def with_port(profile, port):
    profile.incoming = mailsync.IncomingEndpoint("imap", Endpoint("imap.example.com", port, "tls"))
    return profile


def test_garbage_values_raise_typed_errors():
    d = blocking_directory()
    bare = mailsync.google_app(CLIENT_ID, SECRET)
    expect_validation("client_id", mailsync.validate_profile, mailsync.gmail_profile("x", mailsync.app_for_environment(mailsync.google_app("", "x"), ENV_URL, None)))
    expect_validation("environment_url", mailsync.app_for_environment, bare, "", None)
    expect_validation("environment_url", mailsync.app_for_environment, bare, "not a url", None)
    expect_validation("redirect_path", mailsync.app_for_environment, bare, ENV_URL, "no-slash")
    expect_validation("name", d.create_profile, gmail(""))
    expect_validation("name", d.create_profile, gmail("x" * 101))
    for port in (70000, -1, 65536, 2**40):
        expect_validation("port", Endpoint, "imap.example.com", port, "tls")
    expect_validation("incoming.port", d.create_profile, with_port(gmail("Zero"), 0))
    no_host = gmail("NoHost")
    no_host.outgoing = Endpoint("", 587, "start_tls")
    expect_validation("outgoing.host", d.create_profile, no_host)
    plain = gmail("Plain")
    plain.incoming = mailsync.IncomingEndpoint("imap", Endpoint("imap.gmail.com", 143, "plaintext"))
    expect_validation("incoming.security", d.create_profile, plain)
    expect_validation("mailbox_capacity", d.create_profile, gmail("Big", mailbox_capacity=101))
    timeout = gmail("Timeout")
    processing = timeout.processing
    processing.connection_timeout_secs = 0
    timeout.processing = processing
    expect_validation("processing.connection_timeout_secs", d.create_profile, timeout)
    expect_validation("seal_key", SealKey.from_bytes, b"too short")

    profile = d.create_profile(gmail("Good", default=True))
    for email in ("", "not-an-email", "a@", "@example.com", "a b@example.com", "a\x00b@example.com", "x" * 300 + "@e.com"):
        expect_validation("email", d.create_mailbox, user(email))
    forward = user("f@example.com")
    forward.incoming_delivery = "forward_mailbox"
    expect_validation("outgoing_delivery", d.create_mailbox, forward)
    deleting = user("d@example.com")
    deleting.delete_after_processing = True
    expect_validation("delete_after_processing", d.create_mailbox, deleting)

    # Ids are opaque text: anything that is not an existing id is not_found.
    for fn in (d.get_profile, d.set_default_profile, d.delete_profile, d.get_mailbox, d.delete_mailbox, d.state):
        for garbage in (str(uuid.uuid4()), "not-a-uuid", "", "💥"):
            with pytest.raises(NotFoundError) as caught:
                fn(garbage)
            assert caught.value.code == "not_found"
    with pytest.raises(NotFoundError):
        d.find_profile("")
    with pytest.raises(NotFoundError):
        d.find_mailbox("nobody@example.com")
    with pytest.raises(NotFoundError):
        d.create_mailbox(user("a@example.com", str(uuid.uuid4())))

    # The store is still usable after all that.
    assert [p.id for p in d.list_profiles()] == [profile.id]
    assert d.create_mailbox(user("ok@example.com")).profile_id == profile.id


def test_wrong_types_raise_type_error():
    d = blocking_directory()
    with pytest.raises(TypeError):
        mailsync.user_mailbox(42)
    with pytest.raises(TypeError):
        d.create_mailbox("user@example.com")
    with pytest.raises(TypeError):
        d.create_profile(None)
    with pytest.raises(TypeError):
        Endpoint("imap.example.com", "993", "tls")
    with pytest.raises(TypeError):
        mailsync.app_with_test_users(app(), "alice@example.com")  # a str is not a list of str
    with pytest.raises(TypeError):
        mailsync.google_app(CLIENT_ID, SECRET, "extra")
    with pytest.raises(TypeError):
        SealKey.from_bytes("not bytes")
    with pytest.raises(TypeError):
        d.list_mailboxes(42)
    with pytest.raises(TypeError):
        mailsync.MailSync()  # opened only through MailSync.open
    with pytest.raises(AttributeError):
        app().no_such_field = 1
    with pytest.raises(ValueError):
        Endpoint("imap.example.com", 993, "ssl")  # not a Security
    with pytest.raises(ValueError):
        mailsync.error_is_transient("no_such_code")
    with pytest.raises(ValueError):
        gmail("Naive").processing.process_email_received_after = datetime(2024, 1, 1)
    assert d.list_profiles() == []


def test_async_errors_arrive_on_await():
    async def main():
        sync = await mailsync.MailSync.open(StoreLocation.memory(), mailsync.default_options())
        with pytest.raises(NotFoundError):
            await sync.directory.get_profile(str(uuid.uuid4()))
        with pytest.raises(ValidationError) as caught:
            await sync.directory.create_mailbox(user("garbage"))
        assert caught.value.field == "email"
        with pytest.raises(TypeError):
            sync.directory.get_profile(42)  # argument conversion fails before any await
        return await sync.directory.list_profiles()

    assert asyncio.run(main()) == []


def test_store_errors(tmp_path):
    directory = tmp_path / "dir-not-file"
    directory.mkdir()
    with pytest.raises(MailsyncError) as caught:
        mailsync.blocking.MailSync.open(StoreLocation.sqlite(directory, SealKey.generate()), mailsync.default_options())
    assert caught.value.code in {"store", "store_unavailable"}
    with pytest.raises(MailsyncError) as caught:  # no key file next to "data": refused before anything is made
        mailsync.blocking.MailSync.open(StoreLocation.sqlite(directory), mailsync.default_options())
    assert caught.value.code in {"store", "store_unavailable", "seal_key_mismatch"}
    with pytest.raises(mailsync.StoreError):
        SealKey.from_file(tmp_path / "missing.key")
