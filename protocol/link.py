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
                                          ◀─ REQUEST{id, event, kind, timeout_ms}
    RESULT{id, ok, body, kind | error}    ─▶
    PULL{n} ...
                                          ◀─ PING{}  (only while the instance is idle)
    PONG{}                                ─▶  an idle instance that does not answer
                                              within the heartbeat timeout is replaced
                                          ◀─ SHUTDOWN{} (or the socket closes)

Unknown keys are ignored (forward compatibility); a missing or mistyped
required key is a :class:`MalformedFrame` and closes that link only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from protocol.errors import MalformedFrame

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

# Error types the worker reports that are the *caller's* fault, not the handler's.
ERROR_INVALID_EVENT = "InvalidEvent"


def _field(msg: dict[str, Any], key: str, typ: type | tuple[type, ...]) -> Any:
    try:
        value = msg[key]
    except KeyError:
        raise MalformedFrame(f"{msg.get('t', '?')} frame lacks required field {key!r}") from None
    # bool is an int subclass; a count or id given as True is a peer bug.
    if not isinstance(value, typ) or (isinstance(value, bool) and typ in (int, (int, float))):
        raise MalformedFrame(
            f"{msg.get('t', '?')} frame field {key!r} has type {type(value).__name__}"
        )
    return value


def message_type(msg: dict[str, Any]) -> str:
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
        n = _field(msg, "n", int)
        if not 1 <= n <= 1024:
            raise MalformedFrame(f"pull frame asks for {n} requests; allowed 1..1024")
        return cls(n=n)


@dataclass(frozen=True, slots=True)
class ErrorInfo:
    """A failure as the caller may see it: a type name and a message, nothing else."""

    type: str
    message: str

    def encode(self) -> dict[str, Any]:
        return {"type": self.type, "message": self.message}

    @classmethod
    def decode(cls, raw: Any) -> ErrorInfo:
        if not isinstance(raw, dict):
            raise MalformedFrame("error field must be a map")
        return cls(
            type=str(_field(raw, "type", str))[:200],
            message=str(_field(raw, "message", str))[:4000],
        )


@dataclass(frozen=True, slots=True)
class Result:
    id: str
    ok: bool
    body: bytes = b""
    kind: str = KIND_BYTES
    error: ErrorInfo | None = None

    def encode(self) -> dict[str, Any]:
        msg: dict[str, Any] = {"t": RESULT, "id": self.id, "ok": self.ok}
        if self.ok:
            msg["body"] = self.body
            msg["kind"] = self.kind
        else:
            assert self.error is not None
            msg["error"] = self.error.encode()
        return msg

    @classmethod
    def decode(cls, msg: dict[str, Any]) -> Result:
        rid = _field(msg, "id", str)
        ok = _field(msg, "ok", bool)
        if ok:
            kind = _field(msg, "kind", str)
            if kind not in KINDS:
                raise MalformedFrame(f"result frame has unknown kind {kind!r}")
            return cls(id=rid, ok=True, body=_field(msg, "body", bytes), kind=kind)
        return cls(id=rid, ok=False, error=ErrorInfo.decode(msg.get("error")))


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
    trace: str = ""  # W3C traceparent for the handler's context; optional on the wire

    def encode(self) -> dict[str, Any]:
        msg = {
            "t": REQUEST,
            "id": self.id,
            "event": self.event,
            "kind": self.kind,
            "timeout_ms": self.timeout_ms,
        }
        if self.trace:
            msg["trace"] = self.trace
        return msg

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
            trace=_field(msg, "trace", str) if "trace" in msg else "",
        )


READY_FRAME: dict[str, Any] = {"t": READY}
SHUTDOWN_FRAME: dict[str, Any] = {"t": SHUTDOWN}
PING_FRAME: dict[str, Any] = {"t": PING}
PONG_FRAME: dict[str, Any] = {"t": PONG}
