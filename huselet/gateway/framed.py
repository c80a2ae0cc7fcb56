"""The framed ingress: msgpack frames, many calls in flight per connection.

Listens on ``gateway.framed`` (TCP) and/or ``gateway.framed_socket`` (a Unix
socket), speaks :mod:`protocol.ingress`, and hands every call to the same
:class:`~huselet.gateway.core.InvokeCore` as the HTTP ingress, so admission,
deadlines, statuses and error codes are the same.

A call has no task of its own: the reader admits and submits it
(:meth:`~huselet.dispatch.dispatcher.Dispatcher.begin`), its invocation notes
itself done (``on_done``), and one writer task per connection turns every call
done in a loop tick into its reply, all of them in one write. The calls of one
read are submitted in one batch (``StagedInvoker.batch``): they go to idle
instances together at its end, each instance's share in one write.

Bounds, so that no client can cost the node unbounded memory or tasks:

- ``max_connections`` connections (shared with nothing: a flood of framed
  connections does not lock HTTP callers out, and the reverse);
- at most ``framed_max_inflight`` calls per connection: while a connection is
  at its limit the node stops *reading* from it, so TCP pushes back on the
  client; a client that sends more anyway has ignored WELCOME and is cut off;
  a connection throttled lately (429s held) reads 8 KB at a time, not 256 KB;
- frames up to ``max_body_bytes`` plus a small allowance for the envelope;
- a reply that cannot be written within ``read_timeout_ms`` means the client
  does not read: the connection is dropped rather than its replies buffered.
"""

from __future__ import annotations

import trio

from huselet.config import AuthSettings, GatewaySettings, TcpAddress
from huselet.dispatch.invocation import Invocation, InvokeResult
from huselet.errors import BadRequest, Draining, HuseletError, UnknownFunction
from huselet.gateway.admission import Admission, CallRequest, Refusal, Ticket
from huselet.gateway.admission_throttle import HELD_RECEIVE_BYTES, Strikes
from huselet.gateway.core import InvokeCore, StagedInvoker
from huselet.gateway.counters import FramedCounter
from huselet.gateway.routes import new_request_id
from huselet.gateway.source_connections import SourceConnections, source_of
from huselet.listen import open_unix_listener, serve_and_close, unlink_socket
from huselet.log import get_logger
from huselet.netio import FastSocket
from huselet.observe.context import RequestMeta
from protocol.errors import ProtocolError
from protocol.ingress import (
    FUNCTION_NAME,
    PONG_FRAME,
    PROTO_VERSION,
    Call,
    Hello,
    Ping,
    Reply,
    ServerConnection,
)

log = get_logger("gateway.framed")

ENVELOPE_BYTES = 64 * 1024  # frame allowance beyond the body: ids, names, keys
RECEIVE_BYTES = 256 * 1024
_TRANSPORT_ERRORS = (trio.BrokenResourceError, trio.ClosedResourceError, OSError)


class FramedIngress:
    """``run()`` it in a nursery; cancel it to stop."""

    def __init__(
        self, settings: GatewaySettings, core: InvokeCore, admission: Admission | None = None
    ) -> None:
        self.settings = settings
        self.core = core
        if core.staged is None:
            raise TypeError("the framed ingress needs an invoker it can stage (StagedInvoker)")
        self.staged: StagedInvoker = core.staged
        # The HTTP ingress's admission (the daemon passes it): same sources, keys,
        # signatures, replay cache and limits for both front ends.
        self.admission = admission or Admission(AuthSettings())
        self.max_inflight = settings.framed_max_inflight
        self.max_frame = settings.max_body_bytes + ENVELOPE_BYTES
        self._connections = trio.CapacityLimiter(settings.max_connections)
        self.sources = SourceConnections(settings.max_connections_per_source)
        self.bound_address: TcpAddress | None = None
        self.counters: dict[str, int] = {counter: 0 for counter in FramedCounter}

    @property
    def open_connections(self) -> int:
        return int(self._connections.borrowed_tokens)

    async def run(
        self, *, task_status: trio.TaskStatus[TcpAddress | None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        listeners: list[trio.SocketListener] = []
        try:
            if self.settings.framed is not None:
                address = self.settings.framed
                listeners += await trio.open_tcp_listeners(address.port, host=address.host)
                name = listeners[0].socket.getsockname()
                self.bound_address = TcpAddress(name[0], name[1])
            if self.settings.framed_socket is not None:
                listeners.append(await open_unix_listener(self.settings.framed_socket))
            log.info(
                "framed ingress listening",
                tcp=str(self.bound_address) if self.bound_address else None,
                socket=str(self.settings.framed_socket) if self.settings.framed_socket else None,
            )
            task_status.started(self.bound_address)
            await serve_and_close(self._handle_connection, listeners)
        except BaseException:
            for listener in listeners:  # opened before serving began
                await trio.aclose_forcefully(listener)
            raise
        finally:
            self.bound_address = None
            if self.settings.framed_socket is not None:
                unlink_socket(self.settings.framed_socket)

    async def _handle_connection(self, stream: trio.SocketStream) -> None:
        source = source_of(stream)
        if not self.sources.try_open(source):
            await trio.aclose_forcefully(stream)  # its share is open already; HELLO unread
            return
        try:
            self._connections.acquire_nowait()
        except trio.WouldBlock:
            self.sources.close(source)
            await trio.aclose_forcefully(stream)  # nothing to say: HELLO not even read
            return
        self.counters[FramedCounter.CONNECTIONS] += 1
        try:
            await _FramedConnection(self, stream, source).serve()
        except Exception:
            # The last line of defence: one connection's bug must not end serve_listeners.
            log.exception("framed connection failed")
        finally:
            self._connections.release()
            self.sources.close(source)
            await trio.aclose_forcefully(stream)


class _FramedConnection:
    def __init__(
        self, ingress: FramedIngress, stream: trio.SocketStream, peer: str | None = None
    ) -> None:
        self.ingress = ingress
        self.settings = ingress.settings
        self.stream = stream
        # Calls in and replies out: no trio yield per system call (huselet.netio).
        self._io = FastSocket(stream.socket)
        self.conn = ServerConnection(max_frame=ingress.max_frame, max_inflight=ingress.max_inflight)
        self._send_lock = trio.Lock()
        self._cancel = trio.CancelScope()  # replaced by the nursery's once serving
        self._slot_freed = trio.Event()
        self._told_goaway = False
        self.peer = source_of(stream) if peer is None else peer
        # Calls served without a task each (see _begin_call): what each holds,
        # the finished ones and reply frames waiting for _write_replies, and
        # the event that wakes it (replaced each time it wakes).
        self._calls: dict[Invocation, _Held] = {}
        self._finished: list[Invocation] = []
        self._outbox: list[bytes] = []
        self._replies_due = trio.Event()
        self._reading = True
        self._strikes = Strikes()  # throttled calls in a row: their holds grow
        self._read_calls_n = 0  # calls the last read brought (see _read_calls)

    async def serve(self) -> None:
        if not await self._handshake():
            return
        try:
            async with trio.open_nursery() as nursery:
                self._cancel = nursery.cancel_scope
                nursery.start_soon(self._write_replies)
                try:
                    await self._read_calls(nursery)
                except ProtocolError as exc:
                    log.info("framed client broke the protocol", error=str(exc))
                    nursery.cancel_scope.cancel()
                except _TRANSPORT_ERRORS:
                    nursery.cancel_scope.cancel()
                # EOF from the client: calls already sent are still answered.
                self._reading = False
                self._replies_due.set()
        finally:
            self._drop_calls()

    async def _handshake(self) -> bool:
        read_timeout_s = self.settings.read_timeout_ms / 1000
        with trio.move_on_after(read_timeout_s):
            try:
                hello = await self._next_hello()
            except (ProtocolError, *_TRANSPORT_ERRORS):
                return False
            if hello is None:
                return False
            problem = self._judge(hello)
            data = self.conn.refuse(*problem) if problem else self.conn.welcome()
            try:
                await self.stream.send_all(data)
            except _TRANSPORT_ERRORS:
                return False
            if problem:
                self.ingress.counters[FramedCounter.REFUSED] += 1
            return problem is None
        return False  # no HELLO within the read timeout

    async def _next_hello(self) -> Hello | None:
        while True:
            event = self.conn.next_event()
            if isinstance(event, Hello):
                return event
            data = await self.stream.receive_some(RECEIVE_BYTES)
            if not data:
                return None
            self.conn.receive_data(data)

    def _judge(self, hello: Hello) -> tuple[str, str] | None:
        if hello.proto != PROTO_VERSION:
            return ("unsupported_proto", f"this node speaks framed ingress proto {PROTO_VERSION}")
        try:
            self.ingress.core.check_token(hello.token)
        except HuseletError as exc:
            return (exc.code, str(exc))
        return None

    async def _read_calls(self, nursery: trio.Nursery) -> None:
        idle_s = self.settings.idle_timeout_ms / 1000
        while True:
            while self.conn.full:
                # At the limit: read nothing more, so TCP pushes back on the client.
                self._slot_freed = trio.Event()
                await self._slot_freed.wait()
            # The calls of one read go to instances together, at the batch's end.
            with self.ingress.staged.batch():
                event = self._take_calls(nursery)
            if isinstance(event, Ping):
                await self._send(PONG_FRAME)
                await trio.lowlevel.checkpoint()  # a flood of pings must not hog the loop
                continue
            if self.conn.full:
                continue
            # Idle means no call in flight (one waiting on replies needs no timer: a
            # cancel scope per read is not free). A client that sent one call and waits
            # for its reply (concurrency 1) has sent nothing more: wait for the socket
            # before reading, not after a read failing with EAGAIN (a system call per
            # call). One that pipelines (the last read found data at once, or brought
            # several calls) is read at once.
            expect_wait = self._io.waited and self._read_calls_n <= 1
            self._read_calls_n = 0
            held = self._strikes.count and self._strikes.recent(trio.current_time())
            size = HELD_RECEIVE_BYTES if held else RECEIVE_BYTES  # (a flood's: in the kernel)
            if self.conn.inflight:
                data = await self._io.receive_some(size, expect_wait=expect_wait)
            else:
                data = b""  # what idling out leaves
                with trio.move_on_after(idle_s):
                    data = await self._io.receive_some(size, expect_wait=expect_wait)
            if not data:
                return  # EOF, or idle past idle_timeout_ms
            self.conn.receive_data(data)

    def _take_calls(self, nursery: trio.Nursery) -> Ping | None:
        """Admit the calls buffered, up to the in-flight limit: a PING (answered by
        the caller), or None once more bytes are needed (or the limit is reached)."""
        conn = self.conn
        counters = self.ingress.counters
        while not conn.full:
            event = conn.next_event()
            if event is None or isinstance(event, Ping):
                return event
            if isinstance(event, Call):
                self._read_calls_n += 1
                counters[FramedCounter.CALLS] += 1
                self._begin_call(event, nursery)
        return None

    def _admit(self, call: Call) -> tuple[Ticket, int]:
        """Every check before a call is queued: its ticket and the body bytes it reserved.

        As over HTTP: a name that cannot be configured is a 404 (a hostile one,
        up to a frame long, is never echoed back); sources, signature (signed
        mode), tenant and limits; the node-wide body budget. The HELLO's
        token, if the node has one, was checked at the handshake.
        """
        if FUNCTION_NAME.fullmatch(call.fn) is None:
            raise UnknownFunction(
                "not a valid function name (lowercase letters, digits, - and _, at most 63)"
            )
        core = self.ingress.core
        ticket = self.ingress.admission.admit_call(
            CallRequest(call.fn, call.kind, call.timeout_ms, call.auth, self.peer, True)
        )
        try:
            ticket.check_body(call.event)
            core.check_admission(len(call.event))
            if core.invoker.takes_http(call.fn):
                raise BadRequest(
                    f"function {call.fn!r} takes HTTP requests (events/app); call it over HTTP"
                )
            # The same node-wide body budget as HTTP bodies (gateway.max_buffered_mb).
            return ticket, core.body_budget.reserve(len(call.event))
        except BaseException:
            ticket.release()
            raise

    def _begin_call(self, call: Call, nursery: trio.Nursery) -> None:
        """Admit and submit a call, without a task of its own: its reply is written
        by :meth:`_write_replies` once it is done (:attr:`Invocation.on_done`).

        A task per call cost a spawn, a wake-up and an exit per request; here a
        call's only work after its submission is in the batch its reply goes in.
        """
        core = self.ingress.core
        staged = self.ingress.staged
        request_id = call.request_id or new_request_id()
        try:
            ticket, reserved = self._admit(call)
            try:
                inv = core.begin(
                    staged,
                    call.fn,
                    call.event,
                    call.kind,
                    timeout_ms=call.timeout_ms,
                    request_id=request_id,
                    meta=RequestMeta(),
                )
            except BaseException:
                core.body_budget.release(reserved)
                ticket.release()
                raise
        except Refusal as exc:
            if exc.status == 429:
                # Throttled: the reply is held back, growing as over HTTP
                # (admission_throttle; no close: calls overlap). The call keeps its
                # in-flight slot meanwhile, so a flooding connection slows itself.
                now = trio.current_time()
                due, _ = self.ingress.admission.pacer.throttled(self._strikes, exc, now)
                nursery.start_soon(self._refuse_later, call.id, request_id, exc, due)
            else:
                self._queue_reply(_error_reply(call.id, request_id, exc))
            return
        except HuseletError as exc:
            if isinstance(exc, Draining) and not self._told_goaway:
                self._told_goaway = True
                self._outbox.append(self.conn.goaway("the node is draining"))
            self._queue_reply(_error_reply(call.id, request_id, exc))
            return
        self._calls[inv] = _Held(call.id, ticket, reserved)
        inv.on_done = self._call_done
        if inv.done:  # refused or answered while being submitted
            self._call_done(inv)

    def _call_done(self, inv: Invocation) -> None:
        """``inv`` completed (inside Invocation.complete()): reply now, or note it down.

        The only call in flight, with nothing queued or being written (a client
        that waits for each reply): its reply is written here, which spares the
        writer task's wake-up. Otherwise the writer batches it with the others.
        """
        if (
            len(self.conn.inflight) > 1
            or self._finished
            or self._outbox
            or self._send_lock.locked()
        ):
            self._finished.append(inv)
            self._replies_due.set()
            return
        try:
            frame = self._finish(inv, trio.current_time())
            sent = self._io.send_nowait(frame)
        except OSError:
            self._cancel.cancel()
            return
        except Exception:
            # complete() runs inside other work (a link's reader, the deadline
            # timer): a bug here must cost this connection, not that work.
            log.exception("framed reply failed")
            self._cancel.cancel()
            return
        if sent < len(frame):
            self._outbox.append(frame[sent:])  # the writer sends the rest, waiting for room
            self._replies_due.set()
        elif not self._reading:
            self._replies_due.set()  # maybe the last reply: the writer may end
        self._slot_freed.set()

    def _queue_reply(self, reply: Reply) -> None:
        self._outbox.append(self.conn.reply(reply))
        self._replies_due.set()

    async def _refuse_later(self, call_id: int, request_id: str, exc: Refusal, due: float) -> None:
        await trio.sleep_until(due)
        self._queue_reply(_error_reply(call_id, request_id, exc))

    def _finish(self, inv: Invocation, now: float) -> bytes:
        """The reply frame of a finished call; what the call held is given back.

        ``now``: one clock reading for the replies written together.
        """
        held = self._calls.pop(inv)
        core = self.ingress.core
        self.ingress.staged.settle(inv, now=now)
        core.body_budget.release(held.reserved)
        held.ticket.release()
        result = inv.outcome
        if not isinstance(result, InvokeResult):  # an error: as core.outcome() raises it
            try:
                result = core.outcome(inv)
            except HuseletError as exc:
                return self.conn.reply(_error_reply(held.call_id, inv.request_id, exc))
        return self.conn.reply_ok(held.call_id, inv.request_id, result.body, result.content_type)

    async def _write_replies(self) -> None:
        """Write the replies of calls served by :meth:`_begin_call`, all that are due at once.

        Woken once per loop tick at most: one read from an instance link (or
        several links read in one tick) completes several calls, and their
        replies go out in one system call.
        """
        while True:
            await self._replies_due.wait()
            self._replies_due = trio.Event()
            frames, self._outbox = self._outbox, []
            finished, self._finished = self._finished, []
            if finished:
                now = trio.current_time()
                frames += [self._finish(inv, now) for inv in finished]
            if frames:
                self.ingress.counters[FramedCounter.REPLIES_BATCHED] += len(frames) - 1
                await self._send(frames[0] if len(frames) == 1 else b"".join(frames))
                self._slot_freed.set()
            if not self._reading and not self.conn.inflight:
                return  # EOF, and every call answered

    def _drop_calls(self) -> None:
        """The connection ended with calls unanswered: they must not run on for nobody."""
        staged = self.ingress.staged
        calls, self._calls = self._calls, {}
        for inv, held in calls.items():
            inv.on_done = None
            finished = inv.done
            staged.abandon(inv)
            staged.settle(inv, finished=finished)
            self.ingress.core.body_budget.release(held.reserved)
            held.ticket.release()

    async def _send(self, data: bytes) -> None:
        """Write one frame; a client that does not read within the timeout is dropped."""
        lock = self._send_lock
        try:
            lock.acquire_nowait()  # the common case: nobody is writing (no yield)
        except trio.WouldBlock:
            await lock.acquire()
        try:
            try:
                # Most replies fit the socket buffer at once: no timer needed for those.
                sent = self._io.send_nowait(data)
            except OSError:
                self._cancel.cancel()
                return
            if sent == len(data):
                return
            with trio.move_on_after(self.settings.read_timeout_ms / 1000) as scope:
                try:
                    await self._io.send_all(memoryview(data)[sent:])
                except _TRANSPORT_ERRORS:
                    self._cancel.cancel()
                    return
            if scope.cancelled_caught:
                self.ingress.counters[FramedCounter.DROPPED_SLOW] += 1
                log.info("framed client does not read its replies; dropped")
                self._cancel.cancel()
        finally:
            lock.release()


class _Held:
    """What a call served without a task holds until its reply."""

    __slots__ = ("call_id", "reserved", "ticket")

    def __init__(self, call_id: int, ticket: Ticket, reserved: int) -> None:
        self.call_id = call_id
        self.ticket = ticket
        self.reserved = reserved


def _error_reply(call_id: int, request_id: str, exc: HuseletError) -> Reply:
    retry = getattr(exc, "retry_after_s", None)
    return Reply(
        call_id,
        exc.status,
        request_id,
        error_code=exc.code,
        error_message=str(exc),
        retry_after_s=int(retry) if retry is not None else None,
        # Which check or limit refused it, as the HTTP reply's error.reason says.
        error_reason=exc.reason.value if isinstance(exc, Refusal) else None,
    )
