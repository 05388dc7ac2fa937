"""Every integer that crosses from Python into Rust is range-checked: a value
the field cannot hold, including one beyond 64 bits (`2**70`), raises
`ValidationError` naming the field (its attribute name), never pyo3's
`OverflowError`, whether it is set as an attribute or passed to the
constructor. A value of another type still raises `TypeError`.

`test_every_integer_field_is_covered` reads the generated stub, so a new
`int` field without a row in `FIELDS` fails the suite.
"""

import ast
import pathlib
from datetime import datetime, timezone

import pytest

import mailsync

from conftest import app, gmail

U16, U32, I64 = (0, 2**16 - 1), (0, 2**32 - 1), (-(2**63), 2**63 - 1)
NOW = datetime.now(timezone.utc)

def stored_mailbox():
    sync = mailsync.blocking.MailSync.open(mailsync.StoreLocation.memory(), mailsync.default_options())
    mailbox = sync.directory.create_mailbox(mailsync.forward_mailbox("ints@example.com"))
    return mailbox, sync.directory.state(mailbox.id)


# A valid instance of every class with an int field.
SAMPLES = {
    "Endpoint": lambda: mailsync.Endpoint("imap.example.com", 993, "tls"),
    "ProcessingOptions": lambda: gmail("Ints").processing,
    "ServerProfile": lambda: gmail("Ints"),
    "LastTestResult": lambda: mailsync.LastTestResult("success", NOW, 5, "ok"),
    "Mailbox": lambda: stored_mailbox()[0],
    "MailboxState": lambda: stored_mailbox()[1],
    "GrantInfo": lambda: mailsync.GrantInfo("https://issuer.example", "cid", "a@example.com", [], None, NOW, True, 1),
    "StepResult": lambda: mailsync.StepResult("connect", True, 3, None),
    "DirectionReport": lambda: mailsync.DirectionReport("incoming", "IMAP", "h:993", True, [], None, "ok", 7),
    "RetryPolicy": lambda: mailsync.default_options().refresh_retry,
    "FailurePolicy": mailsync.default_failure_policy,
    "Options": mailsync.default_options,
    "EngineOptions": lambda: mailsync.EngineOptions(*range(1, 12), False, False),
    "DirectionStatus.Retrying": lambda: mailsync.DirectionStatus.Retrying(1, "network", "down", NOW),
    "SendOutcome.Failed": lambda: mailsync.SendOutcome.Failed("send_rejected", 550, "550 no", []),
    "SendOutcome.Deferred": lambda: mailsync.SendOutcome.Deferred("send_deferred", 451, "451 later", NOW),
}

# (class, field) -> the range of the Rust field.
FIELDS = {
    ("Endpoint", "port"): U16,
    ("ProcessingOptions", "min_polling_interval_minutes"): U16,
    ("ProcessingOptions", "max_concurrent_connections"): U16,
    ("ProcessingOptions", "connection_timeout_secs"): U16,
    ("ServerProfile", "mailbox_capacity"): U32,
    ("ServerProfile", "version"): I64,
    ("LastTestResult", "duration_ms"): U32,
    ("Mailbox", "version"): I64,
    ("MailboxState", "version"): I64,
    ("GrantInfo", "version"): I64,
    ("StepResult", "duration_ms"): U32,
    ("DirectionReport", "duration_ms"): U32,
    ("RetryPolicy", "attempts"): U32,
    ("RetryPolicy", "initial_backoff_ms"): U32,
    ("RetryPolicy", "max_backoff_ms"): U32,
    ("FailurePolicy", "max_retries"): U32,
    ("FailurePolicy", "interval_secs"): U32,
    ("Options", "token_refresh_skew_secs"): U32,
    ("Options", "http_timeout_secs"): U32,
    ("Options", "refresh_lease_secs"): U32,
    ("Options", "consent_ttl_secs"): U32,
    ("DirectionStatus.Retrying", "failures"): U32,
    ("SendOutcome.Failed", "smtp_code"): U16,
    ("SendOutcome.Deferred", "smtp_code"): U16,
    **{("EngineOptions", f): U32 for f in (
        "postpone_secs", "connections_per_account", "workers", "batch_messages", "batch_bytes", "max_message_bytes",
        "messages_per_cycle", "min_throughput_bytes_per_sec", "sink_timeout_secs", "lease_secs", "sends_per_cycle")},
}

HUGE = [2**63 - 1, 2**63, 2**64, 2**70, 10**100, -(2**63), -(2**63) - 1, -(2**70)]


def out_of_range(low, high):
    return sorted({v for v in (low - 1, high + 1, -1, 2**31, 2**32, *HUGE) if not low <= v <= high})


def cls_of(name):
    obj = mailsync
    for part in name.split("."):
        obj = getattr(obj, part)
    return obj


def construct(name, field, value):
    """The class's constructor with every field of the sample, `field` replaced."""
    cls, sample = cls_of(name), SAMPLES[name]()
    kwargs = {f: getattr(sample, f) for f in __import__("inspect").signature(cls).parameters}
    kwargs[field] = value
    return cls(**kwargs)


def assign(name, field, value):
    sample = SAMPLES[name]()
    setattr(sample, field, value)
    return sample


CASES = [
    pytest.param(key, value, id=f"{key[0]}.{key[1]}={value}")
    for key, (low, high) in FIELDS.items()
    for value in out_of_range(low, high)
]


@pytest.mark.parametrize("key,value", CASES)
def test_out_of_range_integers_raise_validation_error(key, value):
    name, field = key
    ways = [construct] if "." in name else [construct, assign]  # enum variants are read-only
    for way in ways:
        with pytest.raises(mailsync.ValidationError) as info:
            way(name, field, value)
        e = info.value
        assert not isinstance(e, OverflowError)
        assert (e.code, e.field) == ("validation", field)
        assert field in str(e)


@pytest.mark.parametrize("key", list(FIELDS), ids=[f"{c}.{f}" for c, f in FIELDS])
def test_bounds_are_accepted_and_other_types_are_type_errors(key):
    name, field = key
    ways = [construct] if "." in name else [construct, assign]
    for way in ways:
        for bound in FIELDS[key]:
            assert getattr(way(name, field, bound), field) == bound
        for wrong in ["5", 5.0, b"5"]:
            with pytest.raises(TypeError):
                way(name, field, wrong)


def test_other_errors_are_untouched():
    with pytest.raises(ValueError):
        mailsync.Endpoint("h", 1, "ssl")
    with pytest.raises(TypeError):
        mailsync.Endpoint("h", 1)
    with pytest.raises(AttributeError):
        mailsync.Endpoint("h", 1, "tls").no_such_field = 1
    assert mailsync.Endpoint(host="h", port=2, security="tls") == mailsync.Endpoint("h", 2, "tls")
    assert str(__import__("inspect").signature(mailsync.Endpoint)) == "(host, port, security)"
    assert app().client_id  # construction through the functions is unaffected


def stub_int_fields():
    """(class, field) for every `int` constructor parameter in the stub."""
    tree = ast.parse(pathlib.Path(mailsync.__file__).with_name("_native.pyi").read_text())
    found = set()

    def walk(body, prefix):
        for node in body:
            if isinstance(node, ast.ClassDef):
                walk(node.body, prefix + [node.name])
            elif isinstance(node, ast.FunctionDef) and node.name == "__new__":
                for p in node.args.args[1:]:
                    if "builtins.int" in ast.unparse(p.annotation):
                        found.add((".".join(prefix), p.arg))

    walk(tree.body, [])
    return found


def test_every_integer_field_is_covered():
    assert stub_int_fields() == set(FIELDS)
