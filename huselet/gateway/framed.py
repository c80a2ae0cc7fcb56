"""The framed ingress: msgpack frames, many calls in flight per connection.

Listens on ``gateway.framed`` (TCP) and/or ``gateway.framed_socket`` (a Unix
socket), speaks :mod:`protocol.ingress`, and hands every call to the same
:class:`~huselet.gateway.core.InvokeCore` as the HTTP ingress, so admission,
deadlines, statuses and error codes are the same.

Bounds, so that no client can cost the node unbounded memory or tasks:

- ``max_connections`` connections (shared with nothing: a flood of framed
  connections does not lock HTTP callers out, and the reverse);
- at most ``framed_max_inflight`` calls per connection: while a connection is
  at its limit the node stops *reading* from it, so TCP pushes back on the
  client; a client that sends more anyway has ignored WELCOME and is cut off;
- frames up to ``max_body_bytes`` plus a small allowance for the envelope;
- a reply that cannot be written within ``read_timeout_ms`` means the client
  does not read: the connection is dropped rather than its replies buffered.
"""

from __future__ import annotations

import os
import socket
import stat
from pathlib import Path

import trio

from huselet.config import AuthSettings, GatewaySettings, TcpAddress
from huselet.dispatch.invocation import InvokeResult
from huselet.errors import BadRequest, Draining, HuseletError, UnknownFunction
from huselet.gateway.admission import Admission, CallRequest, Refusal
from huselet.gateway.admission_throttle import Strikes
from huselet.gateway.core import InvokeCore
from huselet.gateway.counters import FramedCounter
from huselet.gateway.routes import new_request_id
from huselet.listen import serve_and_close
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
        # The HTTP ingress's admission (the daemon passes it): same sources, keys,
        # signatures, replay cache and limits for both front ends.
        self.admission = admission or Admission(AuthSettings())
        self.max_inflight = settings.framed_max_inflight
        self.max_frame = settings.max_body_bytes + ENVELOPE_BYTES
        self._connections = trio.CapacityLimiter(settings.max_connections)
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
                listeners.append(await _unix_listener(self.settings.framed_socket))
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
                _unlink_socket(self.settings.framed_socket)

    async def _handle_connection(self, stream: trio.SocketStream) -> None:
        try:
            self._connections.acquire_nowait()
        except trio.WouldBlock:
            await trio.aclose_forcefully(stream)  # nothing to say: HELLO not even read
            return
        self.counters[FramedCounter.CONNECTIONS] += 1
        try:
            await _FramedConnection(self, stream).serve()
        except Exception:
            # The last line of defence: one connection's bug must not end serve_listeners.
            log.exception("framed connection failed")
        finally:
            self._connections.release()
            await trio.aclose_forcefully(stream)


class _FramedConnection:
    def __init__(self, ingress: FramedIngress, stream: trio.SocketStream) -> None:
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
        # Replies waiting for the task that opened the batch to send them (see
        # _send_reply); None when no batch is open. At most max_inflight frames.
        self._batch: list[bytes] | None = None
        self.peer = _peer_ip(stream)
        self._strikes = Strikes()  # throttled calls in a row: their holds grow

    async def serve(self) -> None:
        if not await self._handshake():
            return
        async with trio.open_nursery() as nursery:
            self._cancel = nursery.cancel_scope
            try:
                await self._read_calls(nursery)
            except ProtocolError as exc:
                log.info("framed client broke the protocol", error=str(exc))
                nursery.cancel_scope.cancel()
            except _TRANSPORT_ERRORS:
                nursery.cancel_scope.cancel()
            # EOF from the client: calls already sent are still answered.

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
            event = self.conn.next_event()
            if event is None:
                # Idle means no call in flight; a connection waiting on replies is not
                # idle (and needs no timer: a cancel scope per read is not free).
                if self.conn.inflight:
                    data = await self._io.receive_some(RECEIVE_BYTES)
                else:
                    data = b""  # what idling out leaves
                    with trio.move_on_after(idle_s):
                        data = await self._io.receive_some(RECEIVE_BYTES)
                if not data:
                    return  # EOF, or idle past idle_timeout_ms
                self.conn.receive_data(data)
                continue
            if isinstance(event, Call):
                self.ingress.counters[FramedCounter.CALLS] += 1
                nursery.start_soon(self._serve_call, event)
            elif isinstance(event, Ping):
                await self._send(PONG_FRAME)
                await trio.lowlevel.checkpoint()  # a flood of pings must not hog the loop

    async def _serve_call(self, call: Call) -> None:
        request_id = call.request_id or new_request_id()
        try:
            if FUNCTION_NAME.fullmatch(call.fn) is None:
                # As over HTTP: a name that cannot be configured is a 404, and
                # a hostile one (up to a frame long) is never echoed back.
                raise UnknownFunction(
                    "not a valid function name (lowercase letters, digits, - and _, at most 63)"
                )
            # Sources, signature (signed mode), tenant and limits: as over HTTP. The
            # HELLO's token, if the node has one, was checked at the handshake.
            ticket = self.ingress.admission.admit_call(
                CallRequest(call.fn, call.kind, call.timeout_ms, call.auth, self.peer, True)
            )
            try:
                ticket.check_body(call.event)
                result = await self._invoke(call, request_id)
            finally:
                ticket.release()
            reply = Reply(
                call.id, 200, request_id, body=result.body, content_type=result.content_type
            )
        except Refusal as exc:
            if exc.status == 429:
                # Throttled: hold the reply back, growing as over HTTP (admission_throttle;
                # no close: calls overlap); the call keeps its in-flight slot meanwhile,
                # so a flooding connection slows itself.
                due, _ = self._strikes.throttled(exc.pause_s, trio.current_time())
                await trio.sleep_until(due)
            reply = _error_reply(call.id, request_id, exc)
        except HuseletError as exc:
            if isinstance(exc, Draining) and not self._told_goaway:
                self._told_goaway = True
                await self._send(self.conn.goaway("the node is draining"))
            reply = _error_reply(call.id, request_id, exc)
        await self._send_reply(self.conn.reply(reply))
        self._slot_freed.set()

    async def _invoke(self, call: Call, request_id: str) -> InvokeResult:
        core = self.ingress.core
        core.check_admission(len(call.event))
        if core.invoker.takes_http(call.fn):
            raise BadRequest(
                f"function {call.fn!r} takes HTTP requests (events/app); call it over HTTP"
            )
        # The same node-wide body budget as HTTP bodies (gateway.max_buffered_mb).
        reserved = core.body_budget.reserve(len(call.event))
        try:
            return await core.invoke(
                call.fn,
                call.event,
                call.kind,
                timeout_ms=call.timeout_ms,
                request_id=request_id,
                meta=RequestMeta(),  # the request story and histograms, as over HTTP
            )
        finally:
            core.body_budget.release(reserved)

    async def _send_reply(self, frame: bytes) -> None:
        """Send a reply; replies that finish in the same loop tick share one send.

        Under pipelining several calls usually complete together (one read from
        the link completes many): one send each is a system call each. With other
        calls still in flight, the first reply opens a batch and yields once; the
        replies finishing meanwhile join it and return, and it sends them all.
        With nothing else in flight (concurrency 1) there is nothing to wait for.
        """
        batch = self._batch
        if batch is not None:
            batch.append(frame)  # the batch's opener sends it; it is not cancellable
            self.ingress.counters[FramedCounter.REPLIES_BATCHED] += 1
            return
        if not self.conn.inflight:
            await self._send(frame)
            return
        batch = self._batch = [frame]
        # Shielded: once a reply joined the batch, only this task can still send it.
        await trio.lowlevel.cancel_shielded_checkpoint()
        self._batch = None
        await self._send(frame if len(batch) == 1 else b"".join(batch))

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


def _peer_ip(stream: trio.abc.Stream) -> str:
    """The TCP peer's IP address; "" for a Unix socket (the daemon's own user)."""
    if not isinstance(stream, trio.SocketStream) or stream.socket.family == socket.AF_UNIX:
        return ""
    try:
        return str(stream.socket.getpeername()[0])
    except OSError:
        return "?"  # reset already; refused by any source list, matched by none


async def _unix_listener(path: Path) -> trio.SocketListener:
    """Bind ``path`` (0600: only the daemon's own user and root may connect)."""
    _unlink_socket(path)
    sock = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
    try:
        await sock.bind(os.fspath(path))
        # Before listen(): nobody can connect while the mode is still the umask's.
        os.chmod(path, 0o600)
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    return trio.SocketListener(sock)


def _unlink_socket(path: Path) -> None:
    try:
        if stat.S_ISSOCK(path.lstat().st_mode):
            path.unlink()
    except FileNotFoundError:
        pass
