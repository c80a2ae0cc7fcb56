"""Writing an HTTP reply from where its result arrives, with the connection's task parked.

A keep-alive client that sent one request waits for its reply and sends
nothing else meanwhile. Waiting for the invocation in the connection's task
costs a wake-up (through trio's run loop) to write each reply, and another
when the next request arrives. Here the task parks once, on the client's
socket, and the invocation's end (:attr:`Invocation.on_done`, called in the
instance link's reader) makes the reply and writes it with one non-blocking
send: the task wakes once per request, when its next bytes arrive.

The write from the reader is tried only when nothing else can be in the way
(the connection decides when to park, see
:meth:`~huselet.gateway.connection.Connection._await_reply`) and happens only
when the whole reply fits the socket at once and keeps the connection open.
Anything else (a reply that closes the connection, a partial write, a client
gone or broken, a bug) is handed to the parked task, which is woken to do it
as it always did (:class:`ParkEnd`). Nothing here raises into the reader.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import replace
from typing import Protocol

import trio

from huselet.dispatch.invocation import Invocation
from huselet.gateway.pending import PendingReplies, PendingReply
from huselet.gateway.replyflush import ReplyFlush
from huselet.gateway.responses import InternalError, Reply, error_reply, render
from huselet.gateway.routes import RequestHead
from huselet.log import get_logger
from huselet.netio import FastSocket

log = get_logger("gateway")

TRANSPORT_ERRORS = (trio.BrokenResourceError, trio.ClosedResourceError)


class Finisher(Protocol):
    """What the park needs of the ingress (the connection's responder)."""

    @property
    def draining(self) -> bool: ...

    pending: PendingReplies | None
    flush: ReplyFlush


class ParkEnd(enum.Enum):
    WRITTEN = "written"  # the reply went out whole; the client's next bytes are here
    SENT_EARLY = "sent_early"  # the client sent (or closed) before its reply: wait for it
    HANDOFF = "handoff"  # :attr:`ReplyPark.handoff` is the reply for the task to send
    UNSENT = "unsent"  # :attr:`ReplyPark.unsent` is the rest of a reply written in part


class ReplyPark:
    """One connection's park (at most one request parked at a time)."""

    __slots__ = (
        "_ended",
        "_finisher",
        "_head",
        "_io",
        "_pending",
        "_sock",
        "handoff",
        "unsent",
    )

    def __init__(
        self,
        io: FastSocket,
        sock: trio.socket.SocketType,
        finisher: Finisher,
        ended: Callable[[], None],
    ) -> None:
        self._io = io
        self._sock = sock
        self._finisher = finisher
        # Called once a reply went out whole from the reader: the connection ends
        # the exchange there (its bookkeeping, its idle timeout) as it would itself.
        self._ended = ended
        self._pending: PendingReply | None = None  # set while the task waits in park()
        self._head: RequestHead | None = None
        self.handoff: Reply | None = None
        self.unsent: bytes | None = None

    async def park(self, head: RequestHead, pending: PendingReply) -> ParkEnd:
        """Wait for the client's next bytes, the reply written meanwhile if it can be.

        Cancelled from outside with no outcome yet, the invocation is abandoned
        (and the cancellation goes on). SENT_EARLY: ``pending`` is the caller's
        to wait for and finish.
        """
        finisher = self._finisher.pending
        assert finisher is not None
        self._pending = pending
        self._head = head
        pending.inv.on_done = self._done
        try:
            await trio.lowlevel.wait_readable(self._sock)
        except trio.ClosedResourceError:
            # Woken by _wake() (the socket is open: a closed one fails the next call).
            if self._pending is not None:
                self._pending = None
                finisher.abandon(pending)
                raise
        except BaseException:
            if self._pending is not None:
                self._pending = None
                finisher.abandon(pending)
            raise
        if self._pending is not None:
            self._pending = None
            pending.inv.on_done = None
            return ParkEnd.SENT_EARLY
        if self.handoff is not None:
            return ParkEnd.HANDOFF
        if self.unsent is not None:
            return ParkEnd.UNSENT
        return ParkEnd.WRITTEN

    def _wake(self) -> None:
        """Wake the parked task to finish the exchange itself.

        Not a cancel scope around the wait: entering one costs more than the
        wake-up this module saves (~4.7 µs here, per request). trio's
        notify_closing wakes the socket's waiter with ClosedResourceError and
        drops its registration (the next wait registers again); the socket
        stays open, and park() takes that error as this wake.
        """
        trio.lowlevel.notify_closing(self._sock)

    def _done(self, inv: Invocation) -> None:
        """The parked request's invocation is done (inside Invocation.complete())."""
        pending = self._pending
        head = self._head
        if pending is None or pending.inv is not inv or head is None:
            return
        # Written at the end of the loop's pass, not in the middle of the reader's
        # (see huselet.gateway.replyflush).
        self._finisher.flush.later(self._reply)

    def _reply(self) -> None:
        """Make the parked request's reply and write it (see the module doc).

        Put off, it finds the connection as it is then: the request it was for
        may have been taken back by the task (woken by the client meanwhile),
        and another may be parked, maybe not done yet.
        """
        pending = self._pending
        head = self._head
        if pending is None or head is None or not pending.inv.done:
            return
        self._pending = None
        reply: Reply | None = None
        try:
            finisher = self._finisher.pending
            assert finisher is not None
            reply = finisher.finish(pending)
            if reply.close or self._finisher.draining:
                self.handoff = reply  # Connection: close is the task's to send
                self._wake()
                return
            data = render(reply, head.request_id, close=False, head_only=head.method == b"HEAD")
            sent = self._io.write_now(data)
        except Exception as exc:
            # A gone client, a reply that cannot be rendered, a bug: the task sends
            # it again and meets the same error, handled as it always was.
            if reply is None:
                log.exception("reply failed", request_id=head.request_id)
                reply = replace(error_reply(InternalError("internal error")), close=True)
            elif not isinstance(exc, TRANSPORT_ERRORS):
                log.debug("reply left to the connection", error=repr(exc))
            self.handoff = reply
            self._wake()
            return
        if sent < len(data):
            self.unsent = data[sent:]  # the socket is full: the task waits for room
            self._wake()
            return
        try:
            self._ended()
        except Exception:
            log.exception("ending an exchange failed", request_id=head.request_id)
            self._wake()  # the task finds WRITTEN and goes on; better awake than stuck
