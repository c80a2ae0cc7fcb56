"""What both ends of the delta protocol share: bytes in, bytes out, events, one error.

:class:`~protocol.delta.node.NodeSession` and
:class:`~protocol.delta.scheduler.SchedulerSession` are driven the same way by
their IO layers (``receive_data`` → ``next_event`` → ``data_to_send``); this
base holds that plumbing once: the frame decoder and outbox of the current
connection, the event queue, the latched protocol error (after which the
connection only says ``bye``), and the heartbeat/ack bookkeeping. Each end
supplies :meth:`SessionBase._handle` (its state machine) and may extend
:meth:`SessionBase._shut`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import deque
from enum import StrEnum
from typing import Generic, TypeVar

from protocol.delta.decode import decode_message
from protocol.delta.encode import encode_bye, encode_heartbeat
from protocol.delta.errors import AckOutOfRange, DeltaProtocolError
from protocol.delta.events import CloseConnection, NodeEvent, SchedulerEvent
from protocol.delta.messages import Message
from protocol.delta.replay import ReplayBuffer
from protocol.errors import ProtocolError
from protocol.frames import FrameDecoder


class Phase(StrEnum):
    """Where a session stands on its current connection (a str: ``"established"``)."""

    IDLE = "idle"  # node: no connection
    HANDSHAKE = "handshake"  # node: HELLO sent, waiting for WELCOME
    AWAIT_HELLO = "await_hello"  # scheduler: accepted, waiting for HELLO
    ESTABLISHED = "established"
    CLOSED = "closed"  # given up: waiting for connection_lost


_READING = frozenset({Phase.HANDSHAKE, Phase.AWAIT_HELLO, Phase.ESTABLISHED})

# Constrained (not bound): every body below is checked for both ends.
E = TypeVar("E", NodeEvent, SchedulerEvent)


class SessionBase(ABC, Generic[E]):
    """The IO-facing half of a protocol machine; ``E`` is the end's event type."""

    __slots__ = (
        "_ack_sent",
        "_decoder",
        "_error",
        "_events",
        "_last_recv",
        "_last_sent",
        "_now",
        "_out",
        "_phase",
    )

    _decoder: FrameDecoder
    _out: bytearray
    _error: ProtocolError | None
    _last_recv: float
    _last_sent: float
    _ack_sent: int  # the peer's seq we last acknowledged

    def __init__(self, phase: Phase, now: float) -> None:
        self._events: deque[E] = deque()
        self._phase = phase
        self._now = now

    def _open_link(self, max_frame: int, now: float) -> None:
        """Fresh per-connection IO state (durable state lives elsewhere)."""
        self._decoder = FrameDecoder(max_frame=max_frame)
        self._out = bytearray()
        self._error = None
        self._last_recv = self._last_sent = now
        self._ack_sent = 0

    @property
    def established(self) -> bool:
        return self._phase == Phase.ESTABLISHED

    def receive_data(self, data: bytes, now: float) -> None:
        if self._phase not in _READING or self._error is not None:
            return  # late bytes of a connection we already gave up on
        self._now = now
        self._decoder.receive_data(data)

    def data_to_send(self) -> bytes:
        out = bytes(self._out)
        self._out.clear()
        return out

    def next_event(self) -> E | None:
        """Next event, or None when more bytes (or a tick) are needed.

        Raises a :class:`~protocol.errors.ProtocolError` subclass when the peer
        broke the protocol (after first returning events that preceded it); the
        IO layer then sends ``data_to_send()`` (a ``bye``), closes, and calls
        ``connection_lost``.
        """
        if not self._events and self._error is None:
            try:
                while self._phase in _READING and not self._events:
                    msg = self._decoder.next_frame()
                    if msg is None:
                        break
                    self._handle(decode_message(msg))
            except ProtocolError as exc:
                self._error = exc
                self._shut()
                if isinstance(exc, DeltaProtocolError):
                    self._out += encode_bye(exc.code, str(exc))
        if self._events:
            return self._events.popleft()
        if self._error is not None:
            raise self._error
        return None

    # --- for the two ends -------------------------------------------------------------

    @abstractmethod
    def _handle(self, m: Message) -> None:
        """Act on one decoded message (each end its own machine)."""

    def _shut(self) -> None:
        """Stop reading this connection (it waits for ``connection_lost``)."""
        self._phase = Phase.CLOSED

    def _close(self, reason: str, code: str) -> None:
        """Close on our side: tell the IO layer and the peer (a ``bye``) why."""
        self._events.append(CloseConnection(reason, code))
        self._out += encode_bye(code, reason)
        self._shut()

    def _queue_heartbeat(
        self, last_seq: int, applied: int, state: tuple[bytes, int] | None
    ) -> None:
        self._out += encode_heartbeat(last_seq, applied, state)
        self._sent(applied)

    def _sent(self, applied: int) -> None:
        """A frame carrying ``ack=applied`` was queued."""
        self._ack_sent = applied
        self._last_sent = self._now


def check_ack(replay: ReplayBuffer, ack: int, peer: str) -> None:
    """Apply the peer's ack of our stream; acking what we never sent is a protocol error."""
    if ack > replay.last_seq:
        raise AckOutOfRange(f"{peer} acked {ack}; we sent up to {replay.last_seq}")
    replay.ack(ack)
