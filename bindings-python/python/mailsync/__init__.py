"""mailsync: Gmail OAuth 2.0 server-side mail synchronization for CRMs.

Python bindings of the Rust core; see docs/python.md. ``mailsync.MailSync``
is the asyncio flavour, ``mailsync.blocking.MailSync`` the blocking one.
Every failure raises a subclass of :class:`MailsyncError` whose ``code`` is
the stable code shared with every other language (``error_codes()``).
"""

import inspect as _inspect

from mailsync import _native
from mailsync._native import *  # noqa: F403 (every class, error class and function)
from mailsync._native import TimeoutError, Warning, __version__  # noqa: A004 (not in __all__)
from mailsync import blocking

__all__ = [name for name in _native.__all__ if not name.startswith("_")] + ["blocking"]


def _report_overflow(cls):
    """Wraps a record class so that an ``int`` its field cannot hold raises
    ``ValidationError`` naming the field, instead of pyo3's ``OverflowError``.

    Setting an attribute names that attribute. For the constructor, the
    culprit is found by trying each ``int`` argument alone, the others 0
    (which every integer field holds)."""
    construct = _native._constructor(cls)  # before `__new__` is replaced
    signature = _inspect.signature(cls)
    params = list(signature.parameters)

    def overflow(field, value):
        return _native._error("validation", f"{value!r} is out of range", field)

    def __new__(klass, *args, **kwargs):
        try:
            return construct(*args, **kwargs)
        except OverflowError:
            named = {**dict(zip(params, args)), **kwargs}
            ints = {k for k, v in named.items() if type(v) is int}
            for field in ints:
                try:
                    construct(**{**named, **{k: 0 for k in ints - {field}}})
                except OverflowError:
                    raise overflow(field, named[field]) from None
                except Exception:
                    pass
            raise

    def __setattr__(self, name, value):
        try:
            object.__setattr__(self, name, value)
        except OverflowError:
            raise overflow(name, value) from None

    first = _inspect.Parameter("cls", _inspect.Parameter.POSITIONAL_ONLY)
    __new__.__signature__ = signature.replace(parameters=[first, *signature.parameters.values()])
    cls.__new__ = __new__
    cls.__setattr__ = __setattr__


def _records():
    """The classes with a constructor: records and the variants of data enums."""
    for value in vars(_native).values():
        if isinstance(value, type) and not issubclass(value, BaseException):
            yield value
            yield from (v for v in vars(value).values() if isinstance(v, type) and issubclass(v, value))


for _cls in [c for c in _records() if c.__text_signature__ and not _inspect.isfunction(vars(c).get("__new__"))]:
    _report_overflow(_cls)
del _cls
