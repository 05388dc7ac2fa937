"""The committed stub (_native.pyi) must match the built module both ways.

Every stubbed name exists at runtime with the same parameter names and kinds;
every public runtime name (module level and on each class) is stubbed; every
public runtime name has a docstring. A Rust signature change without a stub
update fails here.
"""

import ast
import inspect
import pathlib

import pytest

import mailsync
import mailsync.blocking
from mailsync import _native

STUB = pathlib.Path(mailsync.__file__).with_name("_native.pyi")
TREE = ast.parse(STUB.read_text())


def is_type_alias(node):
    return isinstance(node, ast.AnnAssign) and getattr(node.annotation, "id", None) == "TypeAlias"


def decorators(fn):
    names = set()
    for d in fn.decorator_list:
        if isinstance(d, ast.Name):
            names.add(d.id)
        elif isinstance(d, ast.Attribute):
            names.add(d.attr)  # e.g. "setter"
    return names


def stub_params(fn):
    """(name, kind) pairs from a stub function definition."""
    a = fn.args
    out = [(p.arg, "POSITIONAL_ONLY") for p in a.posonlyargs]
    out += [(p.arg, "POSITIONAL_OR_KEYWORD") for p in a.args]
    if a.vararg:
        out.append((a.vararg.arg, "VAR_POSITIONAL"))
    out += [(p.arg, "KEYWORD_ONLY") for p in a.kwonlyargs]
    if a.kwarg:
        out.append((a.kwarg.arg, "VAR_KEYWORD"))
    return out


def runtime_params(obj):
    sig = inspect.signature(obj)
    return [(p.name, p.kind.name) for p in sig.parameters.values()]


def without_self(params):
    """pyo3 renders the receiver as positional-only `$self`; stubs write `self`."""
    return params[1:] if params and params[0][0] == "self" else params


def stub_defaults(fn):
    a = fn.args
    positional = a.posonlyargs + a.args
    names = {p.arg for p in positional[len(positional) - len(a.defaults):]} if a.defaults else set()
    names |= {p.arg for p, d in zip(a.kwonlyargs, a.kw_defaults) if d is not None}
    return names


def runtime_defaults(obj):
    return {p.name for p in inspect.signature(obj).parameters.values() if p.default is not inspect.Parameter.empty}


STUB_CLASSES = {n.name: n for n in TREE.body if isinstance(n, ast.ClassDef)}
STUB_FUNCS = {n.name: n for n in TREE.body if isinstance(n, ast.FunctionDef)}
STUB_VARS = {n.target.id for n in TREE.body if isinstance(n, ast.AnnAssign) and not is_type_alias(n)}
TYPE_ALIASES = {n.target.id for n in TREE.body if is_type_alias(n)}


def class_members(node):
    """name -> ('method'|'staticmethod'|'property', fn, has_setter) or ('attr', None, False)."""
    members = {}
    for item in node.body:
        if isinstance(item, ast.FunctionDef):
            decos = decorators(item)
            if "setter" in decos:
                kind, fn, _ = members[item.name]
                members[item.name] = (kind, fn, True)
            elif "property" in decos:
                members[item.name] = ("property", item, False)
            elif "staticmethod" in decos:
                members[item.name] = ("staticmethod", item, False)
            else:
                members[item.name] = ("method", item, False)
        elif isinstance(item, ast.AnnAssign):
            members[item.target.id] = ("attr", None, False)
    return members


def stub_members_with_bases(name):
    node = STUB_CLASSES[name]
    members = {}
    for base in node.bases:
        if isinstance(base, ast.Name) and base.id in STUB_CLASSES:
            members.update(stub_members_with_bases(base.id))
    members.update(class_members(node))
    return members


def public(names):
    return {n for n in names if not n.startswith("_")}


def test_type_aliases_are_not_runtime_names():
    for alias in TYPE_ALIASES:
        assert not hasattr(_native, alias), f"{alias} is a runtime name; stub it as a class or function"


def test_every_stubbed_name_exists_at_runtime():
    for name in list(STUB_CLASSES) + list(STUB_FUNCS) + list(STUB_VARS):
        assert hasattr(_native, name), f"stubbed but missing at runtime: {name}"


def test_every_public_runtime_name_is_stubbed():
    stubbed = set(STUB_CLASSES) | set(STUB_FUNCS) | STUB_VARS
    missing = public(dir(_native)) - stubbed
    assert not missing, f"public runtime names without a stub: {sorted(missing)}"


@pytest.mark.parametrize("name", sorted(STUB_FUNCS))
def test_function_signatures(name):
    fn = STUB_FUNCS[name]
    runtime = getattr(_native, name)
    assert runtime_params(runtime) == stub_params(fn)
    assert runtime_defaults(runtime) == stub_defaults(fn)
    assert runtime.__doc__


@pytest.mark.parametrize("name", sorted(STUB_CLASSES))
def test_class_members_match(name):
    cls = getattr(_native, name)
    assert isinstance(cls, type)
    assert cls.__doc__, f"{name} has no docstring"
    node = STUB_CLASSES[name]
    stub_bases = [b.id for b in node.bases if isinstance(b, ast.Name)]
    for base in stub_bases:
        expected = getattr(_native, base, None) or getattr(__builtins__, base, None)
        if expected is None:
            import builtins

            expected = getattr(builtins, base)
        assert issubclass(cls, expected), f"{name} should subclass {base}"
    own = class_members(node)
    all_stubbed = stub_members_with_bases(name)

    # Reverse: every public runtime attribute defined on the class is stubbed.
    runtime_own = public(vars(cls))
    missing = runtime_own - set(all_stubbed)
    assert not missing, f"{name}: runtime members without a stub: {sorted(missing)}"

    # Constructor.
    if "__init__" in own:
        assert cls.__text_signature__, f"{name}: stub has __init__ but the class has no constructor"
        assert runtime_params(cls) == without_self(stub_params(own["__init__"][1]))
        assert runtime_defaults(cls) == stub_defaults(own["__init__"][1])
    elif not issubclass(cls, BaseException):
        assert getattr(cls, "__text_signature__", None) is None, f"{name}: runtime constructor missing in stub"

    for member, (kind, fn, has_setter) in own.items():
        if member == "__init__":
            continue
        if kind == "attr" and issubclass(cls, BaseException):
            continue  # instance attributes of exceptions, checked in test_errors
        assert member in vars(cls) or hasattr(cls, member), f"{name}.{member} missing at runtime"
        static = inspect.getattr_static(cls, member)
        if kind == "property":
            assert isinstance(static, property) or type(static).__name__ == "getset_descriptor", (name, member)
            doc = getattr(static, "__doc__", None)
            assert doc, f"{name}.{member} has no docstring"
            writable = _is_writable(cls, member)
            assert writable == has_setter, f"{name}.{member}: setter in stub={has_setter}, runtime={writable}"
        elif kind == "staticmethod":
            assert isinstance(static, staticmethod), f"{name}.{member} should be a staticmethod"
            runtime = getattr(cls, member)
            assert runtime_params(runtime) == stub_params(fn), f"{name}.{member}"
            assert runtime_defaults(runtime) == stub_defaults(fn), f"{name}.{member}"
            assert runtime.__doc__, f"{name}.{member} has no docstring"
        elif kind == "method":
            assert callable(static) and not isinstance(static, staticmethod), f"{name}.{member}"
            runtime = getattr(cls, member)
            assert without_self(runtime_params(runtime)) == without_self(stub_params(fn)), f"{name}.{member}"
            assert runtime_defaults(runtime) == stub_defaults(fn), f"{name}.{member}"
            assert runtime.__doc__, f"{name}.{member} has no docstring"
        elif kind == "attr":
            assert hasattr(cls, member)


def _samples():
    """One instance of each class that has properties (to probe setters)."""
    from mailsync import (
        Authentication,
        Endpoint,
        IncomingEndpoint,
        MailboxCredentials,
        MailboxSpec,
        OAuthApp,
        Owner,
        ProcessingOptions,
        ServerProfile,
    )

    app = OAuthApp.google("id.apps.googleusercontent.com", "s").for_environment("https://crm.example.com")
    box = mailsync.blocking.MailSync.in_memory().create_mailbox(MailboxSpec.user("a@example.com"))
    # Round-2 values that need no network: Google's endpoints are built in
    # (connect), a never-connected mailbox fails Test & Enable at
    # `credentials`, and disconnecting it emits an event.
    events = []
    sync = mailsync.blocking.MailSync.in_memory_with(mailsync.Settings(event_listener=events.append))
    sync.create_profile(ServerProfile.gmail("g", app.with_test_users(["b@example.com"]), default_for_new_mailboxes=True))
    offline = sync.create_mailbox(MailboxSpec.user("b@example.com"))
    report = sync.test_and_enable(offline.id)
    consent = sync.connect(offline.id)
    sync.disconnect(offline.id)
    return {
        "RetryPolicy": mailsync.RetryPolicy(),
        "Settings": sync.settings(),
        "TestOptions": mailsync.TestOptions(),
        "ConsentRequest": consent,
        "MailboxEvent": events[0],
        "TestReport": report,
        "DirectionReport": report.incoming,
        "StepResult": report.incoming.steps[0],
        "Diagnosis": report.incoming.diagnosis,
        "OAuthApp": app,
        "ConsentScreen": app.consent_screen,
        "Warning": app.with_audience("external", "testing").warnings()[0],
        "Endpoint": Endpoint("h.example.com", 1, "tls"),
        "IncomingEndpoint": IncomingEndpoint("imap", Endpoint("h.example.com", 1, "tls")),
        "Authentication": Authentication.credentials_per_mailbox(),
        "ProcessingOptions": ProcessingOptions(),
        "ServerProfile": ServerProfile.gmail("n", app),
        "Owner": Owner.user("u"),
        "MailboxCredentials": MailboxCredentials("u", "p"),
        "TestStatus": box.incoming_test,
        "ConnectionState": box.connection,
        "Mailbox": box,
        "MailboxSpec": MailboxSpec.user("a@example.com"),
    }


# Classes no public call can produce without the OAuth stack; they are
# `frozen` in Rust, which makes setters impossible, so the stub must declare
# none.
NO_SAMPLE = {"Alert", "LastTestResult", "AccessToken", "TokenInfo"}


def _is_writable(cls, member):
    name = cls.__name__
    if name in NO_SAMPLE:
        return False
    instance = _samples()[name]
    sentinel = object()  # never a valid value: a setter raises TypeError converting it
    try:
        setattr(instance, member, sentinel)
    except AttributeError:
        return False
    except (TypeError, mailsync.MailsyncError):
        return True
    raise AssertionError(f"{name}.{member} accepted an arbitrary object")


def test_blocking_and_async_flavours_have_the_same_operations():
    async_ops = {n: getattr(_native.MailSync, n) for n in public(vars(_native.MailSync))}
    blocking_ops = {n: getattr(_native.BlockingMailSync, n) for n in public(vars(_native.BlockingMailSync))}
    assert async_ops.keys() == blocking_ops.keys()
    for name in async_ops:
        assert runtime_params(async_ops[name]) == runtime_params(blocking_ops[name]), name
    assert mailsync.blocking.MailSync is _native.BlockingMailSync
    assert mailsync.MailSync is _native.MailSync


def test_package_reexports_everything():
    runtime = public(dir(_native)) - {"BlockingMailSync"}
    for name in runtime:
        assert getattr(mailsync, name) is getattr(_native, name), name
    assert set(mailsync.__all__) == (runtime - {"TimeoutError", "Warning", "__version__"}) | {"blocking"}
    assert mailsync.__doc__ and mailsync.blocking.__doc__ and _native.__doc__
