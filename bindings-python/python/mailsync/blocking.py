"""Blocking flavour of the mailsync API, for scripts without asyncio.

``mailsync.blocking.MailSync`` has exactly the operations of
``mailsync.MailSync``, with the same names and parameters, but each call runs
to completion on the binding's tokio runtime and returns the result (the GIL
is released while it waits). Values and exceptions are the same classes as in
``mailsync``.
"""

from mailsync._native import BlockingMailSync as MailSync

__all__ = ["MailSync"]
