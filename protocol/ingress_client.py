"""The caller's end of the framed ingress protocol (see :mod:`protocol.ingress`).

:class:`ClientConnection` numbers calls, matches replies by id and respects
the node's in-flight limit from its WELCOME, as a pure state machine: feed
bytes with ``receive_data``, take messages from ``next_event``. No clock, no
sockets. ``huselet.client`` wraps it for sockets (sync and trio).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from protocol.frames import DEFAULT_MAX_FRAME, FrameDecoder, encode_frame, required_field
from protocol.ingress import (
    FUNCTION_NAME,
    GOAWAY,
    KINDS,
    PONG,
    PROTO_VERSION,
    REFUSED,
    REPLY,
    WELCOME,
    Call,
    GoAway,
    Hello,
    IngressProtocolError,
    Pong,
    Refused,
    Reply,
    State,
    Welcome,
    next_or_close,
)
from protocol.ingress_signing import CallAuth

ClientEvent = Welcome | Refused | Reply | GoAway | Pong


@dataclass(slots=True)
class ClientConnection:
    """The caller's end: numbers calls, matches replies, respects the node's limits."""

    token: str | None = None
    max_frame: int = DEFAULT_MAX_FRAME
    state: State = State.AWAIT_HELLO
    max_inflight: int = 1  # until WELCOME says more
    inflight: set[int] = field(default_factory=set)
    going_away: str | None = None
    _next_id: int = 0
    _decoder: FrameDecoder = field(init=False)

    def __post_init__(self) -> None:
        self._decoder = FrameDecoder(max_frame=self.max_frame)

    def hello(self) -> bytes:
        return encode_frame(Hello(PROTO_VERSION, self.token).encode(), max_frame=self.max_frame)

    @property
    def can_call(self) -> bool:
        return self.state is State.OPEN and len(self.inflight) < self.max_inflight

    def call(
        self,
        fn: str,
        event: bytes,
        kind: str = "bytes",
        *,
        timeout_ms: int | None = None,
        request_id: str | None = None,
        auth: CallAuth | None = None,
    ) -> tuple[int, bytes]:
        """Number and encode one call; returns ``(id, frame)``.

        ``auth``: the call's signature (:func:`protocol.ingress_signing.sign_call`),
        for nodes whose ``[auth]`` names a keys file.
        """
        if self.state is not State.OPEN:
            raise IngressProtocolError("call before the node welcomed this connection")
        if not self.can_call:
            raise IngressProtocolError(f"already {self.max_inflight} calls in flight")
        if FUNCTION_NAME.fullmatch(fn) is None:
            raise IngressProtocolError(f"{fn!r} is not a valid function name")
        if kind not in KINDS:
            raise IngressProtocolError(f"unknown event kind {kind!r}")
        call_id = self._next_id
        self._next_id += 1
        frame = encode_frame(
            Call(call_id, fn, event, kind, timeout_ms, request_id, auth).encode(),
            max_frame=self.max_frame,
        )
        self.inflight.add(call_id)
        return call_id, frame

    def receive_data(self, data: bytes | bytearray) -> None:
        self._decoder.receive_data(data)

    def next_event(self) -> ClientEvent | None:
        return next_or_close(self, self._interpret)

    def _interpret(self, msg: dict[str, Any]) -> ClientEvent:
        kind = required_field(msg, "t", str)
        if self.state is State.AWAIT_HELLO:
            if kind == WELCOME:
                welcome = Welcome.decode(msg)
                if welcome.proto != PROTO_VERSION:
                    raise IngressProtocolError(f"node speaks proto {welcome.proto}")
                self.max_inflight = max(1, welcome.max_inflight)
                self.state = State.OPEN
                return welcome
            if kind == REFUSED:
                self.state = State.CLOSED
                return Refused.decode(msg)
            raise IngressProtocolError(f"expected welcome, got {kind[:32]!r}")
        if kind == REPLY:
            reply = Reply.decode(msg)
            if reply.id not in self.inflight:
                raise IngressProtocolError(f"reply to unknown call id {reply.id}")
            self.inflight.discard(reply.id)
            return reply
        if kind == GOAWAY:
            away = GoAway.decode(msg)
            self.going_away = away.reason
            return away
        if kind == PONG:
            return Pong()
        raise IngressProtocolError(f"unexpected {kind[:32]!r} frame from the node")
