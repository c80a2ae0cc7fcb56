"""HTTP/1.1 ingress of the node: llhttp (httptools) on trio, in front of the dispatcher.

:class:`HttpIngress` listens, accepts TCP connections up to ``max_connections``
and runs a :class:`~huselet.gateway.connection.Connection` for each. It decides
what requests mean: ``POST /v1/invoke/{function}`` goes to
:meth:`Invoker.invoke` (for HTTP functions any method, and any path under
the function: :mod:`huselet.gateway.httpfunc`), ``GET /healthz`` reports the
dispatcher's draining flag,
and every error, typed or not, becomes a JSON reply. Nothing a client does
(garbage, disconnects, stalls, floods of connections) can take the process down.
"""

from __future__ import annotations

import socket
from dataclasses import replace

import trio

from huselet.activity import ActivityCount
from huselet.config import AuthSettings, GatewaySettings, TcpAddress
from huselet.errors import BadRequest, HuseletError, Unauthorized
from huselet.gateway.admission import Admission, AdmissionRequest, AuthMode, Refusal
from huselet.gateway.admission_throttle import Strikes
from huselet.gateway.connection import BodyReader, Connection, Limits
from huselet.gateway.conntimer import ConnectionTimer
from huselet.gateway.core import InvokeCore, Invoker
from huselet.gateway.httpfunc import function_reply, request_info
from huselet.gateway.linger import LINGER_S, TRANSPORT_ERRORS, linger
from huselet.gateway.peer_watch import PeerWatch
from huselet.gateway.pending import PendingReplies, PendingReply
from huselet.gateway.replyflush import ReplyFlush
from huselet.gateway.responses import (
    HEALTH_DRAINING,
    HEALTH_OK,
    Overloaded,
    Reply,
    TooManyConnections,
    content_type_header,
    error_reply,
    render,
)
from huselet.gateway.routes import (
    HEALTHZ,
    RequestHead,
    Route,
    check_plain_invoke,
    event_kind,
    match_route,
    new_request_id,
    parse_timeout_ms,
)
from huselet.gateway.source_connections import SourceConnections, source_of
from huselet.gateway.warnbudget import WarningBudget
from huselet.listen import open_listeners, serve_and_close
from huselet.log import get_logger
from huselet.observe.context import RequestMeta
from protocol.link import KIND_BYTES

log = get_logger("gateway")

# Connections refused for capacity are answered and lingered concurrently up to
# this bound; beyond it they are closed at once so a flood costs no memory.
REJECT_CONCURRENCY = 64
# Protocol warnings come from clients, so a hostile one could flood the log.
WARN_BURST = 10
WARN_WINDOW_S = 10.0


class HttpIngress:
    """The node's HTTP/1.1 ingress. ``run()`` it in a nursery; cancel it to stop."""

    def __init__(
        self,
        settings: GatewaySettings,
        dispatcher: Invoker,
        *,
        auth_token: str | None = None,
        admission: Admission | None = None,
    ) -> None:
        if auth_token is not None and not auth_token.strip():
            # An empty token would let "Authorization: Bearer " through.
            raise ValueError("auth_token must not be empty")
        self.settings = settings
        self.bound_address: TcpAddress | None = None
        self._dispatcher = dispatcher
        token = None if auth_token is None else auth_token.strip().encode("utf-8")
        # Who may invoke what, how often: every invocation passes through it.
        self.admission = admission or Admission(AuthSettings(), bearer_token=token)
        self._max_body = settings.max_body_bytes
        # The dispatch core this front end shares with the framed ingress.
        self.core = InvokeCore(
            dispatcher,
            max_body=settings.max_body_bytes,
            token=None if auth_token is None else auth_token.strip(),
            max_buffered_bytes=settings.max_buffered_mb << 20,
        )
        staged = self.core.staged
        # With the node's dispatcher an invocation is begun, not awaited: the
        # connection waits for it and its reply can go out from the link reader.
        self.pending = None if staged is None else PendingReplies(self.core, staged)
        self.flush = ReplyFlush()  # replies made in a pass of the loop go out at its end
        # Replies written whole from their invocation's completion (the fast path).
        self.replies_direct = 0
        # Held connections closed (at or before their hold's end) as their client had gone.
        self.held_client_gone = 0
        self._peer_watch = PeerWatch()  # ends a held 429 early when its client has gone
        self._limits = Limits.from_settings(settings)
        # Connection-limit policy: refuse, don't queue; see _refuse().
        self._connections = trio.CapacityLimiter(settings.max_connections)
        self.sources = SourceConnections(settings.max_connections_per_source)
        self._rejecting = trio.CapacityLimiter(REJECT_CONCURRENCY)
        self._warnings = WarningBudget(WARN_BURST, WARN_WINDOW_S)
        # Every connection's idle/read/send deadline; runs while run() serves.
        self._timer = ConnectionTimer()
        # Requests between their head and their reply's last byte.
        self.active_requests = ActivityCount()
        # Set by the descriptor-pressure loop: new connections get an immediate 503.
        self.refusing_connections: str | None = None

    def refuse_connections(self, reason: str | None) -> None:
        """While ``reason`` is set, answer every new connection 503 (``reason``) and close it."""
        self.refusing_connections = reason

    @property
    def draining(self) -> bool:
        return self._dispatcher.draining

    @property
    def open_connections(self) -> int:
        return int(self._connections.borrowed_tokens)

    async def run(
        self, *, task_status: trio.TaskStatus[TcpAddress] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Listen on ``settings.http``, report the bound address, serve until cancelled."""
        address = self.settings.http
        listeners = await open_listeners(address, "gateway.http")  # names it when in use
        # Port 0 with a host resolving to several addresses binds each to its
        # own port; the first one is the address we report.
        names = [_local_address(listener) for listener in listeners]
        self.bound_address = names[0]
        log.info("http ingress listening", addresses=[str(name) for name in names])
        self.flush.install()
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._timer.run)
                nursery.start_soon(self._peer_watch.run)
                task_status.started(self.bound_address)
                await serve_and_close(self._handle_connection, listeners)
                nursery.cancel_scope.cancel()
        finally:
            self.flush.uninstall()
            self.bound_address = None

    async def _handle_connection(self, stream: trio.SocketStream) -> None:
        # An exception escaping here would tear down serve_listeners and with it
        # the daemon; Connection handles its own, this is the last line of defence.
        try:
            await self._serve_connection(stream)
        except Exception:
            log.exception("connection handler failed")
            await trio.aclose_forcefully(stream)

    async def _serve_connection(self, stream: trio.SocketStream) -> None:
        try:
            # trio enables TCP_NODELAY on TCP streams already; set it explicitly:
            # replies are small and written in one piece, Nagle would delay them.
            stream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, True)
        except OSError:
            await trio.aclose_forcefully(stream)  # reset before we got to it
            return
        if self.refusing_connections is not None:
            await self._refuse(stream, self.refusing_connections)
            return
        source = source_of(stream)
        if not self.sources.try_open(source):
            await self._refuse(stream, "too many connections from this address", throttled=True)
            return
        try:
            try:
                self._connections.acquire_nowait()
            except trio.WouldBlock:
                await self._refuse(stream, "too many connections")
                return
            try:
                await Connection(stream, self, self._limits, self._warnings, self._timer).serve()
            finally:
                self._connections.release()
        finally:
            self.sources.close(source)

    async def _refuse(
        self, stream: trio.SocketStream, why: str, *, throttled: bool = False
    ) -> None:
        """Answer 503 on a connection beyond ``max_connections`` (or under pressure), close it.

        ``throttled``: the connection is beyond its source's share
        (``max_connections_per_source``): 429, that client's limit, not the node's.

        Failing fast (rather than leaving the client in the accept backlog until
        a slot frees, which with keep-alive can take idle_timeout) lets a load
        balancer or client retry another node at once, and Retry-After says when
        to come back here.
        """
        try:
            self._rejecting.acquire_nowait()
        except trio.WouldBlock:
            await trio.aclose_forcefully(stream)
            return
        try:
            # One source over its share is that client's limit (429), not the node's (503).
            error = TooManyConnections(why) if throttled else Overloaded(why, retry_after_s=1)
            reply = error_reply(error)
            data = render(reply, new_request_id(), close=True, head_only=False)
            with trio.move_on_after(LINGER_S):
                await stream.send_all(data)
            await linger(stream)
        except TRANSPORT_ERRORS:
            pass  # the client left first; nothing to tell it
        finally:
            self._rejecting.release()
            await trio.aclose_forcefully(stream)

    # --- requests ----------------------------------------------------------------------

    async def respond(self, head: RequestHead, read_body: BodyReader) -> Reply | PendingReply:
        """The reply to one request; every HuseletError becomes its error reply.

        Or, for an invocation begun on the staged dispatcher, the pending reply
        (:attr:`pending` finishes it into its reply). Every reply carries
        ``Server-Timing`` and ``X-Huselet-Cold-Start``.
        """
        started = trio.current_time()
        meta = RequestMeta(head.traceparent)
        try:
            route = match_route(head.method, head.target)
            if route is HEALTHZ:
                reply = HEALTH_DRAINING if self._dispatcher.draining else HEALTH_OK
            else:
                takes_http = self._dispatcher.takes_http(route.function)
                if not takes_http:
                    check_plain_invoke(head.method, route)
                outcome = await self._invoke(route, head, read_body, takes_http, meta, started)
                if isinstance(outcome, PendingReply):
                    return outcome
                reply = outcome
        except Refusal as exc:
            reply = error_reply(exc)
            if exc.status == 429:
                # Throttled: the tarpit (admission_throttle) holds the 429 back, longer
                # for each in a row on this connection, then closes it, so a client
                # retrying in a loop cannot keep the event loop busy refusing it.
                strikes = head.strikes if head.strikes is not None else Strikes()
                due, close = self.admission.pacer.throttled(strikes, exc, started)
                if due > started and await self._peer_watch.hold_until(due, head.fd):
                    close = True  # its client has gone: nothing more from this connection
                    self.held_client_gone += 1
                if close:
                    reply = replace(reply, close=True)
        except HuseletError as exc:
            reply = error_reply(exc)
        extra = meta.headers(trio.current_time() - started)
        headers = reply.headers + extra
        return Reply(reply.status, reply.body, reply.content_type, headers, reply.close)

    async def _invoke(
        self,
        route: Route,
        head: RequestHead,
        read_body: BodyReader,
        takes_http: bool,
        meta: RequestMeta,
        started: float,
    ) -> Reply | PendingReply:
        function = route.function
        # Cheap checks first, so a request that will be refused is refused
        # before its body is read (and without a 100 Continue).
        if head.repeated == b"authorization" and self.admission.mode is not AuthMode.OPEN:
            raise Unauthorized("more than one Authorization header")
        path, _, query = head.target.partition(b"?")
        # Who may invoke what, how often (bearer token or signature, tenant, limits):
        # decided before the body is read.
        ticket = self.admission.admit(
            AdmissionRequest(
                head.method, path, query, head.headers, head.authorization, head.client, function
            )
        )
        reserved = 0
        handed_over = False  # to a pending reply, with the body budget reserved
        try:
            if head.repeated is not None:
                raise BadRequest(f"header {head.repeated.decode('ascii')} must appear once")
            timeout_ms = parse_timeout_ms(head.timeout_ms)
            self.core.check_admission(head.content_length)
            # Reserved before a byte of the body is read, held until the reply: the
            # body lives on in the queue and in flight. Chunked: the most it may be.
            declared = head.content_length if head.content_length is not None else self._max_body
            reserved = self.core.body_budget.reserve(declared if head.has_body else 0)
            event = await read_body(self._max_body)
            ticket.check_body(event)
            if takes_http:
                # A bearer token or a signature is the caller's credential, not the function's.
                strip = self.admission.mode is not AuthMode.OPEN
                http = request_info(head, route.subpath, strip_authorization=strip)
                kind = KIND_BYTES
            else:
                http = None
                kind = event_kind(head.content_type)
            if self.pending is not None:
                # Requests begun in one pass of the loop go to idle instances at
                # its end, shared out, each instance's share in one write.
                self.flush.hold(self.pending.staged.batch())
                inv = self.core.begin(
                    self.pending.staged,
                    function,
                    event,
                    kind,
                    timeout_ms=timeout_ms,
                    request_id=head.request_id,
                    meta=meta,
                    http=http,
                )
                # What the request holds is the pending reply's from here on.
                pending = PendingReply(inv, ticket, reserved, takes_http, started, meta)
                reserved, handed_over = 0, True
                return pending
            # Straight to the core: a coroutine layer per request is not free.
            result = await self.core.invoke(
                function,
                event,
                kind,
                timeout_ms=timeout_ms,
                request_id=head.request_id,
                http=http,
                meta=meta,
            )
            if takes_http:
                return function_reply(result)
            return Reply(200, result.body, content_type_header(result.content_type))
        finally:
            self.core.body_budget.release(reserved)
            if not handed_over:
                ticket.release()


def _local_address(listener: trio.SocketListener) -> TcpAddress:
    name = listener.socket.getsockname()
    return TcpAddress(name[0], name[1])
