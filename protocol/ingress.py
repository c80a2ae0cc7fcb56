"""The framed ingress: many invocations in flight on one connection, sans-IO.

For machine callers (a cluster gateway, a load generator) that would otherwise
open one HTTP/1.1 connection per concurrent request. Frames are those of
:mod:`protocol.frames` (4-byte big-endian length + one msgpack map); the ``t``
key names the message. The specification with byte-exact examples is
``protocol/FRAMED.md``; the test vectors in ``tests/protocol/test_ingress.py``
are taken from it.

Conversation::

    client                                   node
    HELLO{proto, token?}                 ─▶
                                         ◀─ WELCOME{proto, max_frame, max_inflight}
                                            (or REFUSED{code, message}; close)
    CALL{id, fn, event, kind, timeout_ms?, request_id?, auth?}  ─▶   any number, up to
    CALL{...}                            ─▶   max_inflight unanswered at once
                                         ◀─ REPLY{id, status, request_id, ...}
                                            in completion order, matched by id
                                         ◀─ GOAWAY{reason}: the node drains; calls
                                            already sent are answered, new ones get 503
    PING{}                               ─▶
                                         ◀─ PONG{}

Statuses and error codes are the HTTP ingress's (``200``, ``404
unknown_function``, ``429 queue_full``, ``504 deadline_exceeded``, …): one
dispatch core, two front ends.

:class:`ServerConnection` (here) and
:class:`~protocol.ingress_client.ClientConnection` (``protocol/ingress_client.py``)
are the two ends as pure state machines: feed bytes with ``receive_data``, take
messages from ``next_event``, and send what the ``hello``/``call``/``reply``…
methods return. No clock, no sockets.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol, TypeVar

from protocol.errors import MalformedFrame, ProtocolError
from protocol.frames import (
    DEFAULT_MAX_FRAME,
    FrameDecoder,
    FrameEncoder,
    encode_frame,
    optional_field,
    required_field,
)
from protocol.ingress_signing import CallAuth, decode_auth

# REFUSED has the instance link's shape exactly: one message class for both.
from protocol.link import REFUSED as REFUSED
from protocol.link import Refused as Refused

PROTO_VERSION = 1

# Message type tags (the ``t`` key).
HELLO = "hello"
WELCOME = "welcome"
CALL = "call"
REPLY = "reply"
GOAWAY = "goaway"
PING = "ping"
PONG = "pong"

# Event encodings, as on the instance link.
KINDS = frozenset({"json", "bytes", "text"})
MAX_CALL_ID = 2**63 - 1
FUNCTION_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")  # as huselet.config.functions
_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
MAX_TOKEN_CHARS = 4096


class IngressProtocolError(ProtocolError):
    """The peer broke the framed ingress protocol; close the connection."""


class State(enum.Enum):
    AWAIT_HELLO = "await_hello"  # server: before HELLO; client: before WELCOME
    OPEN = "open"
    CLOSED = "closed"  # refused, or broken by a protocol error


_field, _optional = required_field, optional_field


# --- messages ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Hello:
    proto: int
    token: str | None = None

    def encode(self) -> dict[str, Any]:
        msg: dict[str, Any] = {"t": HELLO, "proto": self.proto}
        if self.token is not None:
            msg["token"] = self.token
        return msg

    @classmethod
    def decode(cls, msg: dict[str, Any]) -> Hello:
        token = _optional(msg, "token", str)
        if token is not None and len(token) > MAX_TOKEN_CHARS:
            raise MalformedFrame("hello frame token is too long")
        return cls(proto=_field(msg, "proto", int), token=token)


@dataclass(frozen=True, slots=True)
class Welcome:
    proto: int
    max_frame: int
    max_inflight: int

    def encode(self) -> dict[str, Any]:
        return {
            "t": WELCOME,
            "proto": self.proto,
            "max_frame": self.max_frame,
            "max_inflight": self.max_inflight,
        }

    @classmethod
    def decode(cls, msg: dict[str, Any]) -> Welcome:
        return cls(
            proto=_field(msg, "proto", int),
            max_frame=_field(msg, "max_frame", int),
            max_inflight=_field(msg, "max_inflight", int),
        )


class Call(NamedTuple):
    """One call (a named tuple, not a frozen dataclass: as immutable, and built
    in a third of the time; the node decodes one per request)."""

    id: int
    fn: str
    event: bytes
    kind: str = "bytes"
    timeout_ms: int | None = None
    request_id: str | None = None
    auth: CallAuth | None = None  # signed calls (protocol/ingress_signing.py)

    def encode(self) -> dict[str, Any]:
        msg: dict[str, Any] = {
            "t": CALL,
            "id": self.id,
            "fn": self.fn,
            "event": self.event,
            "kind": self.kind,
        }
        if self.timeout_ms is not None:
            msg["timeout_ms"] = self.timeout_ms
        if self.request_id is not None:
            msg["request_id"] = self.request_id
        if self.auth is not None:
            msg["auth"] = self.auth.encode()
        return msg

    @classmethod
    def decode(cls, msg: dict[str, Any]) -> Call:
        # Every call comes here: a field of the exact type (or an absent optional
        # one) is taken without a call; anything else goes through _field or
        # _optional, which refuse it with the same message as ever.
        get = msg.get
        call_id = get("id")
        if type(call_id) is not int:
            call_id = _field(msg, "id", int)
        if not 0 <= call_id <= MAX_CALL_ID:
            raise MalformedFrame(f"call id {call_id} is out of range 0..2**63-1")
        kind = get("kind")
        if type(kind) is not str:
            kind = _field(msg, "kind", str)
        if kind not in KINDS:
            raise MalformedFrame(f"call frame has unknown kind {kind[:32]!r}")
        timeout_ms = get("timeout_ms")
        if timeout_ms is not None and type(timeout_ms) is not int:
            timeout_ms = _optional(msg, "timeout_ms", int)
        if timeout_ms is not None and timeout_ms <= 0:
            raise MalformedFrame("call frame timeout_ms must be positive")
        request_id = get("request_id")
        if request_id is not None and type(request_id) is not str:
            request_id = _optional(msg, "request_id", str)
        if request_id is not None and _REQUEST_ID.fullmatch(request_id) is None:
            request_id = None  # not ours to echo into logs: the node makes its own
        fn = get("fn")
        if type(fn) is not str:
            fn = _field(msg, "fn", str)
        event = get("event")
        if type(event) is not bytes:
            event = _field(msg, "event", bytes)
        return cls(
            id=call_id,
            fn=fn,
            event=event,
            kind=kind,
            timeout_ms=timeout_ms,
            request_id=request_id,
            auth=None if get("auth") is None else decode_auth(msg),
        )


@dataclass(frozen=True, slots=True)
class Reply:
    """The outcome of one call: ``status`` 200 with ``body``, or an error."""

    id: int
    status: int
    request_id: str
    body: bytes = b""
    content_type: str = "application/octet-stream"
    error_code: str | None = None
    error_message: str | None = None
    retry_after_s: int | None = None
    error_reason: str | None = None  # admission refusals: the check or limit that refused

    @property
    def ok(self) -> bool:
        return self.status == 200

    def encode(self) -> dict[str, Any]:
        msg: dict[str, Any] = {
            "t": REPLY,
            "id": self.id,
            "status": self.status,
            "request_id": self.request_id,
        }
        if self.ok:
            msg["body"] = self.body
            msg["content_type"] = self.content_type
        else:
            msg["error"] = {"code": self.error_code or "", "message": self.error_message or ""}
            if self.error_reason is not None:
                msg["error"]["reason"] = self.error_reason
            if self.retry_after_s is not None:
                msg["retry_after_s"] = self.retry_after_s
        return msg

    @classmethod
    def decode(cls, msg: dict[str, Any]) -> Reply:
        status = _field(msg, "status", int)
        common = {
            "id": _field(msg, "id", int),
            "status": status,
            "request_id": _field(msg, "request_id", str),
        }
        if status == 200:
            return cls(
                **common,
                body=_field(msg, "body", bytes),
                content_type=_field(msg, "content_type", str),
            )
        error = _field(msg, "error", dict)
        return cls(
            **common,
            error_code=_field(error, "code", str),
            error_message=_field(error, "message", str),
            retry_after_s=_optional(msg, "retry_after_s", int),
            error_reason=_optional(error, "reason", str),
        )


@dataclass(frozen=True, slots=True)
class GoAway:
    reason: str

    def encode(self) -> dict[str, Any]:
        return {"t": GOAWAY, "reason": self.reason}

    @classmethod
    def decode(cls, msg: dict[str, Any]) -> GoAway:
        return cls(reason=_field(msg, "reason", str))


@dataclass(frozen=True, slots=True)
class Ping:
    pass


@dataclass(frozen=True, slots=True)
class Pong:
    pass


PING_FRAME = encode_frame({"t": PING})
PONG_FRAME = encode_frame({"t": PONG})

ServerEvent = Hello | Call | Ping


# --- the two ends ----------------------------------------------------------------------

E = TypeVar("E")


class _End(Protocol):
    _decoder: FrameDecoder
    state: State


def next_or_close(end: _End, interpret: Callable[[dict[str, Any]], E]) -> E | None:
    """The next decoded message of either end; a protocol error closes that end."""
    try:
        msg = end._decoder.next_frame()
        return None if msg is None else interpret(msg)
    except ProtocolError:
        end.state = State.CLOSED
        raise


@dataclass(slots=True)
class ServerConnection:
    """The node's end of one framed connection.

    It enforces the protocol: HELLO first and once, call ids unique among the
    calls in flight, at most ``max_inflight`` unanswered calls (a client that
    sends more has ignored WELCOME and is cut off: the transport should stop
    reading while :attr:`full` so a well-behaved client never gets there).
    """

    max_frame: int = DEFAULT_MAX_FRAME
    max_inflight: int = 256
    state: State = State.AWAIT_HELLO
    inflight: set[int] = field(default_factory=set)
    _decoder: FrameDecoder = field(init=False)
    _encoder: FrameEncoder = field(init=False)

    def __post_init__(self) -> None:
        self._decoder = FrameDecoder(max_frame=self.max_frame)
        self._encoder = FrameEncoder()

    @property
    def full(self) -> bool:
        return len(self.inflight) >= self.max_inflight

    def receive_data(self, data: bytes | bytearray) -> None:
        self._decoder.receive_data(data)

    def next_event(self) -> ServerEvent | None:
        """The next message from the client, or None until more bytes arrive.

        Raises :class:`ProtocolError` (the connection must close) on garbage, an
        oversized frame, a duplicate call id or a call beyond ``max_inflight``.
        """
        return next_or_close(self, self._interpret)

    def _interpret(self, msg: dict[str, Any]) -> ServerEvent:
        kind = msg.get("t")
        if type(kind) is not str:
            kind = _field(msg, "t", str)
        if self.state is State.CLOSED:
            raise IngressProtocolError("the connection is closed")
        if self.state is State.AWAIT_HELLO:
            if kind != HELLO:
                raise IngressProtocolError(f"expected hello first, got {kind[:32]!r}")
            return Hello.decode(msg)
        if kind == CALL:
            call = Call.decode(msg)
            inflight = self.inflight
            if call.id in inflight:
                raise IngressProtocolError(f"call id {call.id} is already in flight")
            if len(inflight) >= self.max_inflight:  # self.full, without a call per call
                raise IngressProtocolError(
                    f"more than {self.max_inflight} calls in flight (the limit WELCOME gave)"
                )
            inflight.add(call.id)
            return call
        if kind == PING:
            return Ping()
        if kind == HELLO:
            raise IngressProtocolError("hello sent twice")
        raise IngressProtocolError(f"unexpected {kind[:32]!r} frame from a client")

    def welcome(self) -> bytes:
        if self.state is not State.AWAIT_HELLO:
            raise IngressProtocolError("welcome after the handshake")
        self.state = State.OPEN
        return encode_frame(
            Welcome(PROTO_VERSION, self.max_frame, self.max_inflight).encode(),
            max_frame=self.max_frame,
        )

    def refuse(self, code: str, message: str) -> bytes:
        self.state = State.CLOSED
        return encode_frame(Refused(code, message[:1000]).encode(), max_frame=self.max_frame)

    def reply(self, reply: Reply) -> bytes:
        """Encode the reply to an in-flight call and free its slot."""
        if reply.id not in self.inflight:
            raise IngressProtocolError(f"reply to call {reply.id}, which is not in flight")
        self.inflight.discard(reply.id)
        return self._encoder.encode(
            reply.encode(), max_frame=self.max_frame, payload_len=len(reply.body)
        )

    def reply_ok(self, call_id: int, request_id: str, body: bytes, content_type: str) -> bytes:
        """:meth:`reply` of ``Reply(call_id, 200, request_id, body=body,
        content_type=content_type)``, the same bytes, without the Reply built
        first (the node sends one per call)."""
        if call_id not in self.inflight:
            raise IngressProtocolError(f"reply to call {call_id}, which is not in flight")
        self.inflight.discard(call_id)
        message = {
            "t": REPLY,
            "id": call_id,
            "status": 200,
            "request_id": request_id,
            "body": body,
            "content_type": content_type,
        }
        return self._encoder.encode(message, max_frame=self.max_frame, payload_len=len(body))

    def goaway(self, reason: str) -> bytes:
        return encode_frame(GoAway(reason[:1000]).encode(), max_frame=self.max_frame)
