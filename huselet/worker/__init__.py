"""The worker SDK: the code that runs *inside* a function instance.

Started by a runtime as ``python -m huselet.worker`` (or forked from a zygote
that imported :mod:`huselet.worker.sdk`), it connects to its function's Unix
socket, introduces itself, loads the handler and pulls requests until the
link closes. It imports only the standard library, msgpack and the sans-IO
:mod:`protocol` package: no trio, because every import here is paid on every
cold start.

Handler contract: ``handler(event, context)`` where ``event`` is the decoded
JSON value (or ``bytes``), and ``context`` is a :class:`~huselet.worker.sdk.Context`.
Return a JSON-serialisable value, ``str`` or ``bytes``; ``async def`` handlers
are run to completion. Raise :class:`HTTPError` to choose the caller's status.
HTTP functions, WSGI and ASGI apps: see :mod:`huselet.worker.entries`.
"""

from huselet.worker.errors import HTTPError

__all__ = ["HTTPError"]
