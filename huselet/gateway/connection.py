"""One HTTP/1.1 connection of the ingress: the read/answer loop and its limits.

:class:`Connection` turns a byte stream into a sequence of request/reply
exchanges, strictly one at a time (:mod:`huselet.gateway.httpparse` parses
pipelined requests in order and they are answered in order). It owns
everything a client can do wrong at the HTTP level: malformed or oversized
heads, bodies over the limit, stalling before or during a request, not
reading replies, vanishing mid-exchange. What a request *means* is the
:class:`Responder`'s business (the ingress).
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Protocol

import trio

from huselet.activity import ActivityCount
from huselet.config import GatewaySettings
from huselet.errors import BadRequest, HuseletError, PayloadTooLarge
from huselet.gateway.admission_throttle import Strikes
from huselet.gateway.conntimer import ConnectionTimer
from huselet.gateway.httpparse import (
    CONNECTION_CLOSED,
    END_OF_MESSAGE,
    NEED_DATA,
    Event,
    HttpProtocolError,
    RequestParser,
)
from huselet.gateway.httpparse import RequestHead as ParsedHead
from huselet.gateway.linger import TRANSPORT_ERRORS, linger, peer_closed, peer_of
from huselet.gateway.pending import PendingReplies, PendingReply
from huselet.gateway.replyflush import ReplyFlush
from huselet.gateway.replypark import ParkEnd, ReplyPark
from huselet.gateway.responses import (
    HeadersTooLarge,
    InternalError,
    Reply,
    RequestTimeout,
    error_reply,
    render,
)
from huselet.gateway.routes import RequestHead, new_request_id, read_head
from huselet.gateway.warnbudget import WarningBudget
from huselet.log import get_logger
from huselet.netio import FastSocket

log = get_logger("gateway")

RECEIVE_BYTES = 64 * 1024
# Waiting for a request's head, a read takes at most this much. The parser parses
# all it is fed, so a 64 KB read of a pipelining client (a flood held by the tarpit)
# became ~130 parsed heads, kept as Python objects for seconds (the GC traverses them);
# the rest now waits in the kernel. A body is read RECEIVE_BYTES at a time.
HEAD_RECEIVE_BYTES = 8 * 1024
# Request line plus headers. The parser answers a longer incomplete head with a
# 431; a complete one that arrived in a single read is measured after parsing.
MAX_HEAD_BYTES = 16 * 1024

BodyReader = Callable[[int], Awaitable[bytes]]
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


class Responder(Protocol):
    """What a connection needs from the ingress."""

    @property
    def draining(self) -> bool: ...

    active_requests: ActivityCount

    # Finishes what respond() returns pending (None: it never does).
    pending: PendingReplies | None
    flush: ReplyFlush  # where replies written from the link reader wait for the pass's end
    replies_direct: int  # how many went out whole that way (status: http_connections)
    held_client_gone: int  # held connections closed as their client had gone (status too)

    async def respond(self, head: RequestHead, read_body: BodyReader) -> Reply | PendingReply: ...


@dataclass(frozen=True, slots=True)
class Limits:
    idle_timeout_s: float  # keep-alive wait for the first byte of the next request
    read_timeout_s: float  # head and body of one request, from its first byte
    send_timeout_s: float  # one whole reply
    max_body_bytes: int

    @classmethod
    def from_settings(cls, settings: GatewaySettings) -> Limits:
        idle_s = settings.idle_timeout_ms / 1000
        return cls(
            idle_timeout_s=idle_s,
            read_timeout_s=settings.read_timeout_ms / 1000,
            # A client that takes none of a reply for as long as we would keep
            # an idle connection is gone (or hostile) and loses its slot.
            send_timeout_s=idle_s,
            max_body_bytes=settings.max_body_bytes,
        )


class Connection:
    """One client connection: reads requests, writes replies, enforces timeouts.

    Timeouts: while waiting for the first byte of a request the idle timeout
    applies; that byte starts the read timeout, which covers the request's head
    and body (not the handler's run time, which the scheduler bounds); writing
    a reply has the send timeout. All three are one deadline (:attr:`due`),
    moved as the exchange goes on, that cancels one scope around the
    connection: the ingress's :class:`ConnectionTimer` watches it lazily, so
    moving it costs an attribute write on the hot path, not a trio deadline.
    """

    __slots__ = (
        "_active",
        "_awaiting_continue",
        "_body_done",
        "_broken",
        "_client_ip",
        "_in_request",
        "_io",
        "_limits",
        "_park",
        "_parser",
        "_readable",
        "_replied",
        "_request",
        "_request_id",
        "_responder",
        "_scope",
        "_sending",
        "_stream",
        "_strikes",
        "_timer",
        "_warnings",
        "due",
        "timer_at",
    )

    def __init__(
        self,
        stream: trio.SocketStream,
        responder: Responder,
        limits: Limits,
        warnings: WarningBudget,
        timer: ConnectionTimer,
    ) -> None:
        self._stream = stream
        self._io = FastSocket(stream.socket)  # the request and reply path: no yield per call
        self._responder = responder
        self._limits = limits
        self._warnings = warnings
        self._parser = RequestParser(MAX_HEAD_BYTES)
        self._request: ParsedHead | None = None  # the request being answered
        self._body_done = True  # all of its body (maybe none) has been read
        self._awaiting_continue = False  # its client waits for our 100 Continue
        self._replied = False  # (part of) a reply to it went out
        self._broken = False  # the client broke the protocol
        self._scope = trio.CancelScope()
        self._timer = timer
        self.due = math.inf  # when the timer cancels _scope (inf: never)
        self.timer_at = math.inf  # when the timer looks at this connection next
        self._in_request = False  # some byte of the current request has arrived
        self._sending = False  # the scope's deadline is the send timeout
        self._request_id: str | None = None
        self._client_ip: str | None = None  # the peer's address, looked up once
        self._strikes = Strikes()  # consecutive throttled replies (the ingress's tarpit)
        self._active = False  # counted in the responder's active_requests
        # Where a reply is written from the link reader (see _await_reply).
        self._park = ReplyPark(self._io, stream.socket, responder, self._ended_by_reader)
        self._readable = False  # a park ended because the client's next bytes are here

    async def serve(self) -> None:
        """Serve requests until either side ends the connection, then close it."""
        try:
            with self._scope:
                await self._serve_requests()
            if self._scope.cancelled_caught and self._in_request and not self._sending:
                # Read timeout with part of a request in: say so. An idle or
                # non-reading client is closed on quietly.
                await self._reply_and_close(RequestTimeout("the request was not received in time"))
        except HttpProtocolError as exc:
            await self._protocol_error(exc)
        except TRANSPORT_ERRORS:
            pass  # the client went away mid-request or mid-reply
        except Exception:
            log.exception("connection failed", request_id=self._request_id)
            await self._reply_and_close(InternalError("internal error"))
        finally:
            self._timer.forget(self)
            await self._close()

    def expire(self) -> None:
        """The idle, read or send deadline passed (called by the timer)."""
        self._scope.cancel()

    async def _serve_requests(self) -> None:
        while True:
            request = await self._next_request()
            if request is None or not await self._exchange(request):
                return

    async def _exchange(self, request: ParsedHead) -> bool:
        """Answer one request; True when the connection can carry the next one."""
        started = trio.current_time() if log.is_debug() else 0.0  # for the request log line
        head = read_head(request)
        if self._client_ip is None:
            self._client_ip = peer_of(self._stream).rpartition(":")[0].strip("[]")
        head.client = self._client_ip
        head.strikes = self._strikes
        head.fd = self._stream.socket.fileno()
        self._request_id = head.request_id
        if not head.has_body:
            # Consume the (empty) body's end now: the request is then complete,
            # so the connection can be kept without waiting for more input.
            await self._receive_body(0, keep=False)
            self._request_complete()
        if head.size > MAX_HEAD_BYTES:
            reply = error_reply(HeadersTooLarge("request line and headers are too large"))
        elif head.chunked and head.content_length is not None:
            # The classic request-smuggling shape (RFC 9112 6.3): a proxy in
            # front may have framed it differently, so refuse it and close.
            problem = BadRequest("both Content-Length and Transfer-Encoding are present")
            reply = replace(error_reply(problem), close=True)
        else:
            # Counted until the reply is written, so a draining daemon waits for
            # replies of completed invocations to reach their callers. (enter and
            # leave, not hold(): a generator context manager per request is not free)
            active = self._responder.active_requests
            active.enter()
            self._active = True
            try:
                answer = await self._responder.respond(head, self.read_body)
                if type(answer) is Reply:
                    reply = answer
                else:
                    assert type(answer) is PendingReply
                    out = await self._await_reply(head, answer)
                    if out is None:
                        return True  # it went out whole, from the link reader or here
                    reply = out
                return await self._send_reply(head, reply, started)
            finally:
                if self._active:  # (the link reader leaves for a reply it wrote whole)
                    self._active = False
                    active.leave()
        return await self._send_reply(head, reply, started)

    async def _send_reply(self, head: RequestHead, reply: Reply, started: float) -> bool:
        request = self._request
        close = (
            reply.close
            or self._responder.draining  # send clients on to nodes that stay up
            or request is None
            or not request.keep_alive  # HTTP/1.0, Connection: close, Upgrade
            # They still wait for our 100 Continue, so whether the body will
            # follow this reply is unknowable: the connection cannot continue.
            or (not self._body_done and self._awaiting_continue)
        )
        data = render(reply, head.request_id, close=close, head_only=head.method == b"HEAD")
        self._replied = True
        await self._send(data)
        if log.is_debug():
            log.debug(
                "request",
                method=head.method.decode("ascii", "replace"),
                path=head.target[:256].decode("ascii", "replace"),
                status=reply.status,
                ms=round((trio.current_time() - started) * 1000, 3),
                request_id=head.request_id,
            )
        return await self._finish_cycle(close)

    async def _finish_cycle(self, close: bool) -> bool:
        if close:
            return False  # we or the client asked for Connection: close
        if not self._body_done:
            # We answered early (404, 401…) with a body in flight: read and drop
            # the rest so that the next request is parsed from its first byte.
            try:
                await self._receive_body(self._limits.max_body_bytes, keep=False)
            except PayloadTooLarge:
                return False
        self._request = None
        return True

    # --- waiting for an invocation --------------------------------------------------------

    async def _await_reply(self, head: RequestHead, pending: PendingReply) -> Reply | None:
        """The reply to send for a begun invocation, or None when it already went out whole.

        When the client waits for this reply and nothing else (its body read,
        nothing of a next request buffered, keep-alive), this task parks on the
        client's socket and the link reader writes the reply
        (:mod:`huselet.gateway.replypark`): one wake-up per request instead of two.
        """
        finisher = self._responder.pending
        assert finisher is not None  # a responder returns pending replies only with one
        inv = pending.inv
        request = self._request
        if (
            not inv.done
            and request is not None
            and request.keep_alive
            and self._body_done
            and not self._parser.in_request
            and not log.is_debug()  # the request log line is this task's to write
        ):
            park = self._park
            end = await park.park(head, pending)
            if end is ParkEnd.WRITTEN:
                self._readable = True
                return None
            if end is ParkEnd.HANDOFF:
                reply, park.handoff = park.handoff, None
                assert reply is not None
                return reply
            if end is ParkEnd.UNSENT:
                rest, park.unsent = park.unsent, None
                assert rest is not None
                self._replied = True
                await self._send(rest)  # under the send timeout
                self._request = None  # it was complete and is kept alive
                return None
            # SENT_EARLY: the client sent (or closed) first; read it after the reply.
        if not inv.done:
            try:
                await inv.wait()
            except BaseException:
                finisher.abandon(pending)
                raise
        return finisher.finish(pending)

    def _ended_by_reader(self) -> None:
        """A parked request's reply went out whole from the link reader: end the
        exchange as :meth:`_finish_cycle` and :meth:`_next_request` would."""
        self._request = None
        self._request_id = None
        self._arm(in_request=False)
        self._active = False
        responder = self._responder
        responder.active_requests.leave()
        responder.replies_direct += 1

    # --- reading -----------------------------------------------------------------------

    async def _next_request(self) -> ParsedHead | None:
        """The next request's head, or None when the client closed cleanly."""
        self._request_id = None  # an error before the head gets a fresh id
        self._replied = False
        event = self._parser.next_event()  # a pipelined request may already be parsed
        if event is NEED_DATA:
            # Part of the next request may be buffered: then its read timeout runs.
            # (After a reply from the link reader the idle wait is armed already.)
            if not self._readable:
                self._arm(in_request=self._parser.in_request)
            event = await self._next_event(HEAD_RECEIVE_BYTES)
        else:
            self._arm(in_request=True)
        if type(event) is ParsedHead:
            if self._strikes.count and self._client_gone():
                return None
            self._request = event
            self._body_done = False
            self._awaiting_continue = event.expect_continue
            return event
        if event is CONNECTION_CLOSED:
            return None
        raise RuntimeError(f"unexpected {type(event).__name__} before a request")

    def _client_gone(self) -> bool:
        """A connection held at 429 lately whose client has closed: admit nothing more from it.

        What it pipelined before leaving is still queued, in the kernel and in
        the parser, and each request of it would otherwise be admitted (an
        invocation nobody reads) or held again before a write to the closed
        socket fails. One poll(2) per request, only on held connections.
        """
        if not self._strikes.recent(trio.current_time()) or not peer_closed(self._stream.socket):
            return False
        self._responder.held_client_gone += 1
        return True

    def _arm(self, *, in_request: bool) -> None:
        self._in_request = in_request
        timeout = self._limits.read_timeout_s if in_request else self._limits.idle_timeout_s
        self._timer.set_due(self, trio.current_time() + timeout)

    def _request_complete(self) -> None:
        # What follows is the handler, which the scheduler bounds, not us.
        # (No timer call: an infinite due never moves the timer earlier.)
        self.due = math.inf

    async def _next_event(self, size: int = RECEIVE_BYTES) -> Event:
        parser = self._parser
        while True:
            event = parser.next_event()
            if event is not NEED_DATA:
                return event
            parser.receive(await self._receive(size))

    async def _receive(self, size: int) -> bytes:
        # Between requests a keep-alive client is reading our reply: wait first
        # (unless a park for the reply ended because its next bytes are here).
        expect_wait = not self._in_request and not self._readable
        self._readable = False
        data = await self._io.receive_some(size, expect_wait=expect_wait)
        if data and not self._in_request:
            # The first byte of a request ends the idle wait and starts its read timeout.
            self._arm(in_request=True)
        return data

    async def read_body(self, limit: int) -> bytes:
        """The request body (at most ``limit`` bytes, else PayloadTooLarge)."""
        if self._awaiting_continue and not self._body_done:
            # The request passed every check that does not need its body.
            self._awaiting_continue = False
            await self._send(CONTINUE)
        body = await self._receive_body(limit, keep=True)
        self._request_complete()
        return body

    async def _receive_body(self, limit: int, *, keep: bool) -> bytes:
        chunks: list[bytes | bytearray] = []
        size = 0
        while not self._body_done:
            event = await self._next_event()
            if type(event) is bytes:
                self._awaiting_continue = False  # the client sends its body anyway
                size += len(event)
                if size > limit:
                    # Chunked bodies have no length up front: stop at the limit.
                    raise PayloadTooLarge(f"the request body exceeds {limit} bytes")
                if keep:
                    chunks.append(event)
            elif event is END_OF_MESSAGE:
                self._body_done = True
            else:
                raise RuntimeError(f"unexpected {event!r} in a request body")
        return b"".join(chunks)

    # --- writing and closing -------------------------------------------------------------

    async def _send(self, data: bytes) -> None:
        # Most replies fit the socket buffer at once: those need no send deadline
        # (moving a scope's deadline is not free), nor a yield.
        sent = self._io.write_now(data)
        if sent == len(data):
            return
        timer = self._timer
        resume = self.due  # a read may follow (rest of a body answered early)
        timer.set_due(self, trio.current_time() + self._limits.send_timeout_s)
        self._sending = True
        await self._io.send_all(memoryview(data)[sent:])
        self._sending = False
        timer.set_due(self, resume)

    async def _protocol_error(self, exc: HttpProtocolError) -> None:
        if exc.client_closed:
            return  # the client closed mid-request: nobody to answer, nothing hostile
        self._broken = True
        self._warnings.warn("malformed request", problem=str(exc), peer=peer_of(self._stream))
        if exc.status == 431:
            await self._reply_and_close(HeadersTooLarge("request line and headers are too large"))
        else:
            await self._reply_and_close(BadRequest("malformed HTTP request"))

    async def _reply_and_close(self, exc: HuseletError) -> None:
        """Send the error reply unless a reply already went out; the caller then closes."""
        if self._replied:
            return  # a reply is already (partly) out: all we can do is close
        self._replied = True
        request_id = self._request_id or new_request_id()
        try:
            data = render(error_reply(exc), request_id, close=True, head_only=False)
            # Outside the connection's scope (which may have expired): own bound.
            with trio.move_on_after(self._limits.send_timeout_s):
                await self._stream.send_all(data)
        except TRANSPORT_ERRORS:
            pass

    async def _close(self) -> None:
        try:
            if self._broken or not self._body_done:
                await linger(self._stream)
        finally:
            await trio.aclose_forcefully(self._stream)
