"""The function kinds a worker serves, behind one interface: :class:`Entry`.

- ``handler`` — ``handler(event, context)`` with the decoded body (the default);
- ``http`` — the same signature, the event a Lambda v2 HTTP dict
  (:mod:`huselet.worker.httpevent`), the return value an HTTP response;
- ``wsgi`` / ``asgi`` — an unchanged web app (:mod:`huselet.worker.webapps`).

``async def`` handlers (anything returning an awaitable) run to completion on
the instance's event loop, created lazily in the instance. The request's
deadline cancels them a little before the daemon's own deadline would kill
the instance, so a timed-out async handler costs a 504, not the instance.

Every failure becomes a :class:`~protocol.link.Result` with a typed error:
the caller's bad event (400), ``HTTPError`` (its status), a cancelled async
handler (504), an unusable return value or a broken app (502), any other
exception (502 with type and message; the traceback goes to the instance log,
each line tagged with the request id).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from typing import Any, Protocol

from huselet.worker import output
from huselet.worker.errors import HTTPError
from protocol.link import (
    ERROR_DEADLINE,
    ERROR_INVALID_EVENT,
    KIND_BYTES,
    KIND_JSON,
    KIND_TEXT,
    EntryKind,
    ErrorInfo,
    HttpRequest,
    HttpResponse,
    Request,
    Result,
)

# How long before the request's deadline an async handler is cancelled: the
# cancellation and its 504 must reach the daemon before it gives up on the
# instance. A tenth of the budget, at most this much.
CANCEL_MARGIN_S = 0.2
ERROR_INVALID_RESULT = "InvalidResult"

_CONTENT_TYPE_OF_KIND = {
    KIND_JSON: "application/json",
    KIND_TEXT: "text/plain; charset=utf-8",
    KIND_BYTES: "application/octet-stream",
}


class InvalidEvent(ValueError):
    """The request's body cannot become the handler's event (the caller's fault: 400)."""


class DeadlineReached(Exception):
    """An async handler was cancelled at the request's deadline."""


class Context(Protocol):
    request_id: str
    function_name: str
    deadline: float


class Entry(Protocol):
    """What the worker's loop needs from a function, whatever its kind."""

    kind: EntryKind

    def start(self, function: str) -> None:
        """In the instance (after any fork), before it reports ready."""

    def serve(self, req: Request, ctx: Context) -> Result: ...

    def stop(self) -> None:
        """The instance is stopping (link closed or SHUTDOWN); best effort, bounded."""


# --- decoding and encoding -----------------------------------------------------------


def decode_event(event: bytes, kind: str) -> Any:
    """The handler's event for a default-kind request; InvalidEvent when it cannot be."""
    if kind != KIND_JSON:
        return event
    if not event:
        return None
    try:
        return json.loads(event)
    except ValueError as exc:
        raise InvalidEvent(f"event is not valid JSON: {exc}") from None
    except RecursionError:
        # The C decoder guards its own recursion: deep nesting (e.g. 100k "[")
        # is refused here instead of killing the instance.
        raise InvalidEvent(
            f"event is not valid JSON: nested deeper than {sys.getrecursionlimit()} levels"
        ) from None
    except MemoryError:
        raise InvalidEvent("event is too large to decode in this instance's memory") from None


def encode_value(value: Any) -> tuple[bytes, str]:
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value), KIND_BYTES
    if isinstance(value, str):
        return value.encode("utf-8"), KIND_TEXT
    return json.dumps(value, separators=(",", ":")).encode("utf-8"), KIND_JSON


def http_of(req: Request) -> HttpRequest:
    """The request's HTTP view; one is made up for an invocation that had none."""
    if req.http is not None:
        return req.http
    content_type = _CONTENT_TYPE_OF_KIND.get(req.kind, "application/octet-stream")
    return HttpRequest("POST", "/", "", (("content-type", content_type),), "")


def failed(req: Request, exc: BaseException) -> Result:
    """The Result for an exception raised by function code."""
    if isinstance(exc, HTTPError):
        return Result(req.id, ok=False, error=ErrorInfo("HTTPError", exc.message, exc.status))
    if isinstance(exc, DeadlineReached):
        return Result(req.id, ok=False, error=ErrorInfo(ERROR_DEADLINE, str(exc)))
    log_traceback(req.id, exc)
    return Result(req.id, ok=False, error=ErrorInfo(type(exc).__name__, str(exc)))


def log_traceback(request_id: str, exc: BaseException) -> None:
    # The operator gets the traceback in the instance log (one record with the
    # request id); the caller only type + message.
    output.report_exception(request_id, exc)


def invalid_result(req: Request, message: str) -> Result:
    return Result(req.id, ok=False, error=ErrorInfo(ERROR_INVALID_RESULT, message))


def http_result(req: Request, reply: tuple[int, list[tuple[str, str]], bytes]) -> Result:
    status, headers, body = reply
    return Result(
        req.id, ok=True, body=body, kind=KIND_BYTES, http=HttpResponse(status, tuple(headers))
    )


# --- the event loop of async code --------------------------------------------------------


class EventLoop:
    """This instance's asyncio loop, made on first use (in the instance, never a zygote)."""

    def __init__(self) -> None:
        self._loop: Any = None

    def get(self) -> Any:
        if self._loop is None:
            import asyncio

            self._loop = asyncio.new_event_loop()
            asyncio.set_event_loop(self._loop)
        return self._loop

    def run(self, awaitable: Any, deadline: float) -> Any:
        """Run ``awaitable`` to completion, cancelled (DeadlineReached) near ``deadline``."""
        import asyncio

        remaining = deadline - time.monotonic()
        budget = max(0.0, remaining - min(CANCEL_MARGIN_S, remaining / 10))

        async def bounded() -> Any:
            timeout = asyncio.timeout(budget)
            try:
                async with timeout:
                    return await awaitable
            except TimeoutError:
                if timeout.expired():
                    raise DeadlineReached(
                        f"cancelled at the request's deadline ({remaining * 1000:.0f} ms)"
                    ) from None
                raise

        return self.get().run_until_complete(bounded())

    def close(self) -> None:
        if self._loop is not None and not self._loop.is_closed():
            try:
                self._loop.close()
            except RuntimeError:
                pass


def _awaitable(value: Any) -> bool:
    return hasattr(type(value), "__await__")


# --- the kinds -------------------------------------------------------------------------


class HandlerEntry:
    """``handler(event, context)``: the default event, or a Lambda v2 HTTP event."""

    def __init__(self, fn: Callable[..., Any], kind: EntryKind = EntryKind.HANDLER) -> None:
        self.fn = fn
        self.kind = kind
        self.loop = EventLoop()
        self._function = ""

    def start(self, function: str) -> None:
        self._function = function

    def stop(self) -> None:
        self.loop.close()

    def serve(self, req: Request, ctx: Context) -> Result:
        try:
            if self.kind is EntryKind.HTTP:
                from huselet.worker.httpevent import build_event

                event = build_event(http_of(req), req.event, req.id, self._function)
            else:
                event = decode_event(req.event, req.kind)
        except InvalidEvent as exc:
            return Result(req.id, ok=False, error=ErrorInfo(ERROR_INVALID_EVENT, str(exc)))
        try:
            value = self.fn(event, ctx)
            if _awaitable(value):
                value = self.loop.run(value, ctx.deadline)
        except Exception as exc:
            return failed(req, exc)
        if self.kind is EntryKind.HTTP:
            from huselet.worker.httpevent import InvalidResponse, to_reply

            try:
                return http_result(req, to_reply(value))
            except InvalidResponse as exc:
                return invalid_result(req, f"handler returned an unusable HTTP response: {exc}")
        try:
            body, kind = encode_value(value)
        except (TypeError, ValueError, RecursionError) as exc:
            return invalid_result(
                req, f"handler returned a value that is not JSON-serialisable: {exc}"
            )
        return Result(req.id, ok=True, body=body, kind=kind)


class WsgiEntry:
    kind = EntryKind.WSGI

    def __init__(self, app: Any) -> None:
        self.app = app
        self._function = ""

    def start(self, function: str) -> None:
        self._function = function

    def stop(self) -> None:
        return None

    def serve(self, req: Request, ctx: Context) -> Result:
        from huselet.worker.webapps import AppError, call_wsgi

        try:
            return http_result(req, call_wsgi(self.app, http_of(req), req.event, self._function))
        except AppError as exc:
            return invalid_result(req, str(exc))
        except Exception as exc:
            return failed(req, exc)


class AsgiEntry:
    kind = EntryKind.ASGI

    def __init__(self, app: Any) -> None:
        self.app = app
        self.loop = EventLoop()
        self.server: Any = None

    def start(self, function: str) -> None:
        from huselet.worker.webapps import AsgiServer

        self.server = AsgiServer(self.app, function)
        self.server.start(self.loop.get())

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
        self.loop.close()

    def serve(self, req: Request, ctx: Context) -> Result:
        from huselet.worker.webapps import AppError

        try:
            reply = self.loop.run(self.server.call(http_of(req), req.event), ctx.deadline)
        except AppError as exc:
            return invalid_result(req, str(exc))
        except Exception as exc:
            return failed(req, exc)
        return http_result(req, reply)


def make_entry(target: Any, kind: EntryKind) -> Entry:
    """Wrap the imported ``module:attr`` for ``kind``; TypeError if it cannot serve."""
    if not callable(target):
        raise TypeError(f"a {kind.value} entry must be callable, got {type(target).__name__}")
    if kind is EntryKind.WSGI:
        return WsgiEntry(target)
    if kind is EntryKind.ASGI:
        return AsgiEntry(target)
    return HandlerEntry(target, kind)


def preload(kind: EntryKind) -> None:
    """Import what serving ``kind`` needs *before* the function's code is imported.

    In a zygote these imports are then shared by every instance, and being
    loaded first they are the worker's, whatever module names the function uses.
    """
    if kind is EntryKind.HTTP:
        import huselet.worker.httpevent
    elif kind in (EntryKind.WSGI, EntryKind.ASGI):
        import huselet.worker.webapps  # noqa: F401
    if kind is EntryKind.ASGI:
        import asyncio  # noqa: F401
