"""The blocking flavour of the mailsync API, for scripts without asyncio.

``mailsync.blocking.MailSync`` (and ``mailsync.blocking.Engine``) has the
operations of ``mailsync.MailSync`` (``mailsync.Engine``),
with the same names and parameters; each call runs to completion on the
binding's runtime (the GIL is released while it waits) and returns the
result. Values and exceptions are the classes of ``mailsync``.
"""

from mailsync._native import BlockingChecks as Checks
from mailsync._native import BlockingConnections as Connections
from mailsync._native import BlockingDirectory as Directory
from mailsync._native import BlockingEngine as Engine
from mailsync._native import BlockingEngineHandle as EngineHandle
from mailsync._native import BlockingMailSync as MailSync

__all__ = ["Checks", "Connections", "Directory", "Engine", "EngineHandle", "MailSync"]
