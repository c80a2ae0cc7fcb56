"""Messages of the instance link: the daemon ⇄ one function instance.

The instance is the *client*: it connects to its function's Unix socket,
introduces itself, and then *pulls* work. It never listens on anything.

Conversation (every message is one frame from :mod:`protocol.frames`; the
``t`` key names its type)::

    instance                               daemon
    HELLO{proto, instance_id, token, pid} ─▶
                                          ◀─ WELCOME{proto, function, max_frame}
                                             (or REFUSED{code, message}; close)
    READY{}                               ─▶  handler imported
    (or FATAL{error}; exit)                  handler failed to load
    PULL{n}                               ─▶  n more requests welcome
                                          ◀─ REQUEST{id, event, kind, timeout_ms[, http]}
    RESULT{id, ok, body, kind[, http] | error}  ─▶
    PULL{n} ...
                                          ◀─ PING{}  (only while the instance is idle)
    PONG{}                                ─▶  an idle instance that does not answer
                                              within the heartbeat timeout is replaced
                                          ◀─ SHUTDOWN{} (or the socket closes)

Credit. ``PULL{n}`` adds ``n`` to the requests the daemon may send; each
REQUEST takes one. A worker may hold more than one (the reference worker
keeps up to 4 while its handler is fast, topping up by half a window), and
the daemon then writes several REQUESTs back to back. The worker must run
them in the order received and write each RESULT before it starts the next
request: then, if it dies, of the requests it received and did not answer
only the *oldest* can have started (what it wrote stays readable after it
dies), and the daemon requeues the others as never delivered. A worker that
finds a request's deadline (``timeout_ms`` from its arrival) already past
when its turn comes answers it with ``DeadlineExceeded`` without running it.
The daemon keeps at most a few requests in flight per instance whatever the
credit, and it queues a request behind another one in flight only when no
instance is idle and the function cannot start another.

Unknown keys are ignored (forward compatibility); a missing or mistyped
required key is a :class:`MalformedFrame` and closes that link only.

HTTP functions (``events = "http"``, WSGI and ASGI apps) use three optional
keys, all ignored by peers that predate them:

- ``REQUEST.http`` = ``{method, path, query, headers: [[name, value], ...],
  source_ip}`` — the HTTP request the ingress received; ``event`` is then the
  raw body (kind ``bytes``). ``path`` is the path under the function (``/``
  at least), ``query`` the raw query string without ``?``, header names are
  lower-case, names and values are latin-1 text as on the wire.
- ``RESULT.http`` = ``{status, headers: [[name, value], ...]}`` — the HTTP
  response the function chose; ``body``/``kind`` carry its body. Without it
  the reply is a 200 with a content type derived from ``kind``.
- ``error.status`` (4xx/5xx) — the status a handler asked for by raising
  ``HTTPError``; without it a handler error is a 502.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

from protocol.errors import MalformedFrame
from protocol.frames import required_field

PROTO_VERSION = 1

# Message type tags (the ``t`` key).
HELLO = "hello"
WELCOME = "welcome"
REFUSED = "refused"
READY = "ready"
FATAL = "fatal"
PULL = "pull"
REQUEST = "request"
RESULT = "result"
SHUTDOWN = "shutdown"
PING = "ping"
PONG = "pong"

# How an event or a result body is encoded (the ``kind`` key).
KIND_JSON = "json"  # UTF-8 JSON text
KIND_BYTES = "bytes"  # opaque bytes
KIND_TEXT = "text"  # UTF-8 text (a handler returned str)
KINDS = frozenset({KIND_JSON, KIND_BYTES, KIND_TEXT})


class EntryKind(enum.StrEnum):
    """How a worker calls the function's code (env ``HUSELET_KIND``)."""

    HANDLER = "handler"  # handler(event, context); event = the decoded body
    HTTP = "http"  # handler(event, context); event = a Lambda v2 HTTP event
    WSGI = "wsgi"  # a WSGI app, one request at a time
    ASGI = "asgi"  # an ASGI app on the instance's event loop

    @property
    def takes_http(self) -> bool:
        """Invoked through ``ANY /v1/invoke/{function}/{path...}`` with its HTTP request."""
        return self is not EntryKind.HANDLER


# Error types the worker reports that are the *caller's* fault, not the handler's.
ERROR_INVALID_EVENT = "InvalidEvent"
# The worker cancelled an async handler at the request's deadline (504, not 502).
ERROR_DEADLINE = "DeadlineExceeded"

# Bounds of the optional http maps: far beyond what the ingress admits (its
# head limit is 16 KiB), small enough that a hostile peer cannot make us build
# millions of tuples.
MAX_HTTP_HEADERS = 1024


_field = required_field


def message_type(msg: dict[str, Any]) -> str:
    kind = msg.get("t")
    if type(kind) is str:  # the common case, without a call (every frame comes here)
        return kind
    return str(_field(msg, "t", str))


# --- instance → daemon ------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Hello:
    proto: int
    instance_id: str
    token: str
    pid: int

    def encode(self) -> dict[str, Any]:
        return {
            "t": HELLO,
            "proto": self.proto,
            "instance_id": self.instance_id,
            "token": self.token,
            "pid": self.pid,
        }

    @classmethod
    def decode(cls, msg: dict[str, Any]) -> Hello:
        return cls(
            proto=_field(msg, "proto", int),
            instance_id=_field(msg, "instance_id", str),
            token=_field(msg, "token", str),
            pid=_field(msg, "pid", int),
        )


@dataclass(frozen=True, slots=True)
class Pull:
    n: int

    def encode(self) -> dict[str, Any]:
        return {"t": PULL, "n": self.n}

    @classmethod
    def decode(cls, msg: dict[str, Any]) -> Pull:
        return cls(n=pull_count(msg))


def pull_count(msg: dict[str, Any]) -> int:
    """The validated ``n`` of a PULL frame (the daemon's hot path: no Pull object)."""
    n = msg.get("n")
    if type(n) is not int:
        n = _field(msg, "n", int)
    if not 1 <= n <= 1024:
        raise MalformedFrame(f"pull frame asks for {n} requests; allowed 1..1024")
    return n


def _headers(raw: Any, where: str) -> tuple[tuple[str, str], ...]:
    if not isinstance(raw, list | tuple) or len(raw) > MAX_HTTP_HEADERS:
        raise MalformedFrame(f"{where} headers must be a list of at most {MAX_HTTP_HEADERS} pairs")
    out = []
    for pair in raw:
        if (
            not isinstance(pair, list | tuple)
            or len(pair) != 2
            or not isinstance(pair[0], str)
            or not isinstance(pair[1], str)
        ):
            raise MalformedFrame(f"{where} headers must be [name, value] pairs of strings")
        out.append((pair[0], pair[1]))
    return tuple(out)


@dataclass(frozen=True, slots=True)
class HttpRequest:
    """The HTTP request behind an invocation of an HTTP function (``REQUEST.http``)."""

    method: str
    path: str  # under the function: "/" or "/users/7"
    query: str = ""  # raw, without the "?"
    headers: tuple[tuple[str, str], ...] = ()  # names lower-case
    source_ip: str = ""

    def encode(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "path": self.path,
            "query": self.query,
            "headers": [list(pair) for pair in self.headers],
            "source_ip": self.source_ip,
        }

    @classmethod
    def decode(cls, raw: Any) -> HttpRequest:
        if not isinstance(raw, dict):
            raise MalformedFrame("request frame field 'http' must be a map")
        return cls(
            method=_field(raw, "method", str),
            path=_field(raw, "path", str),
            query=_field(raw, "query", str),
            headers=_headers(raw.get("headers", []), "request"),
            source_ip=_field(raw, "source_ip", str),
        )


@dataclass(frozen=True, slots=True)
class HttpResponse:
    """The status and headers an HTTP function answered with (``RESULT.http``)."""

    status: int
    headers: tuple[tuple[str, str], ...] = ()

    def encode(self) -> dict[str, Any]:
        return {"status": self.status, "headers": [list(pair) for pair in self.headers]}

    @classmethod
    def decode(cls, raw: Any) -> HttpResponse:
        if not isinstance(raw, dict):
            raise MalformedFrame("result frame field 'http' must be a map")
        status = _field(raw, "status", int)
        if not 200 <= status <= 599:
            raise MalformedFrame(f"result frame has HTTP status {status}; allowed 200..599")
        return cls(status=status, headers=_headers(raw.get("headers", []), "result"))


@dataclass(frozen=True, slots=True)
class ErrorInfo:
    """A failure as the caller may see it: a type name and a message, nothing else.

    ``status`` is set when the handler chose the HTTP status (``HTTPError``).
    """

    type: str
    message: str
    status: int | None = None

    def encode(self) -> dict[str, Any]:
        msg: dict[str, Any] = {"type": self.type, "message": self.message}
        if self.status is not None:
            msg["status"] = self.status
        return msg

    @classmethod
    def decode(cls, raw: Any) -> ErrorInfo:
        if not isinstance(raw, dict):
            raise MalformedFrame("error field must be a map")
        status = raw.get("status")
        if status is not None and (
            not isinstance(status, int) or isinstance(status, bool) or not 400 <= status <= 599
        ):
            raise MalformedFrame("error field 'status' must be an integer in 400..599")
        return cls(
            type=str(_field(raw, "type", str))[:200],
            message=str(_field(raw, "message", str))[:4000],
            status=status,
        )


@dataclass(frozen=True, slots=True)
class Result:
    id: str
    ok: bool
    body: bytes = b""
    kind: str = KIND_BYTES
    error: ErrorInfo | None = None
    http: HttpResponse | None = None

    def encode(self) -> dict[str, Any]:
        msg: dict[str, Any] = {"t": RESULT, "id": self.id, "ok": self.ok}
        if self.ok:
            msg["body"] = self.body
            msg["kind"] = self.kind
            if self.http is not None:
                msg["http"] = self.http.encode()
        else:
            assert self.error is not None
            msg["error"] = self.error.encode()
        return msg

    @classmethod
    def decode(cls, msg: dict[str, Any]) -> Result:
        return cls(*result_fields(msg))


ResultFields = tuple[str, bool, bytes, str, "ErrorInfo | None", "HttpResponse | None"]


def result_fields(msg: dict[str, Any]) -> ResultFields:
    """A RESULT's validated fields in :class:`Result`'s order (the daemon's hot
    path: no frozen dataclass built for each one)."""
    # Fields of the exact type are taken as they are (one per request: no call
    # each); anything else goes through _field, which says what is wrong.
    rid = msg.get("id")
    if type(rid) is not str:
        rid = _field(msg, "id", str)
    ok = msg.get("ok")
    if ok is not True and ok is not False:
        ok = _field(msg, "ok", bool)
    if ok:
        kind = msg.get("kind")
        if type(kind) is not str:
            kind = _field(msg, "kind", str)
        if kind not in KINDS:
            raise MalformedFrame(f"result frame has unknown kind {kind!r}")
        http = msg.get("http")
        body = msg.get("body")
        if type(body) is not bytes:
            body = _field(msg, "body", bytes)
        return rid, True, body, kind, None, None if http is None else HttpResponse.decode(http)
    return rid, False, b"", KIND_BYTES, ErrorInfo.decode(msg.get("error")), None


@dataclass(frozen=True, slots=True)
class Fatal:
    """The instance cannot serve at all (e.g. the handler failed to import)."""

    error: ErrorInfo

    def encode(self) -> dict[str, Any]:
        return {"t": FATAL, "error": self.error.encode()}

    @classmethod
    def decode(cls, msg: dict[str, Any]) -> Fatal:
        return cls(error=ErrorInfo.decode(msg.get("error")))


# --- daemon → instance ------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Welcome:
    proto: int
    function: str
    max_frame: int

    def encode(self) -> dict[str, Any]:
        return {
            "t": WELCOME,
            "proto": self.proto,
            "function": self.function,
            "max_frame": self.max_frame,
        }

    @classmethod
    def decode(cls, msg: dict[str, Any]) -> Welcome:
        return cls(
            proto=_field(msg, "proto", int),
            function=_field(msg, "function", str),
            max_frame=_field(msg, "max_frame", int),
        )


@dataclass(frozen=True, slots=True)
class Refused:
    code: str
    message: str

    def encode(self) -> dict[str, Any]:
        return {"t": REFUSED, "code": self.code, "message": self.message}

    @classmethod
    def decode(cls, msg: dict[str, Any]) -> Refused:
        return cls(code=_field(msg, "code", str), message=_field(msg, "message", str))


@dataclass(frozen=True, slots=True)
class Request:
    id: str
    event: bytes
    kind: str
    timeout_ms: int  # remaining time at send; the instance computes its own deadline
    http: HttpRequest | None = None  # set for HTTP functions; event is then the raw body
    trace: str = ""  # W3C traceparent for the handler's context; optional on the wire

    def encode(self) -> dict[str, Any]:
        return request_message(
            self.id, self.event, self.kind, self.timeout_ms, self.http, self.trace
        )

    @classmethod
    def decode(cls, msg: dict[str, Any]) -> Request:
        kind = _field(msg, "kind", str)
        if kind not in KINDS:
            raise MalformedFrame(f"request frame has unknown kind {kind!r}")
        return cls(
            id=_field(msg, "id", str),
            event=_field(msg, "event", bytes),
            kind=kind,
            timeout_ms=_field(msg, "timeout_ms", int),
            http=None if msg.get("http") is None else HttpRequest.decode(msg["http"]),
            trace=_field(msg, "trace", str) if "trace" in msg else "",
        )


READY_FRAME: dict[str, Any] = {"t": READY}
SHUTDOWN_FRAME: dict[str, Any] = {"t": SHUTDOWN}
PING_FRAME: dict[str, Any] = {"t": PING}
PONG_FRAME: dict[str, Any] = {"t": PONG}


def request_message(
    rid: str,
    event: bytes,
    kind: str,
    timeout_ms: int,
    http: HttpRequest | None = None,
    trace: str = "",
) -> dict[str, Any]:
    """A REQUEST message as :meth:`Request.encode` makes it, without a frozen dataclass
    built first (the daemon sends one per request)."""
    msg: dict[str, Any] = {
        "t": REQUEST,
        "id": rid,
        "event": event,
        "kind": kind,
        "timeout_ms": timeout_ms,
    }
    if http is not None:
        msg["http"] = http.encode()
    if trace:
        msg["trace"] = trace
    return msg
