"""The ``[metrics] http`` listener: ``GET /metrics`` and nothing else.

A separate listener from the invoke ingress so it can be bound and firewalled
on its own (Prometheus scrapes from inside the network; callers come from
wherever the ingress faces). Each connection gets one answer and is closed;
scrapes are rare, so simplicity beats keep-alive here. Connections beyond a
small bound are closed at once, and every read and write has a deadline.
"""

from __future__ import annotations

from collections.abc import Callable

import h11
import trio

from huselet.config import TcpAddress
from huselet.listen import open_listeners, serve_in_slot
from huselet.log import get_logger

log = get_logger("metrics")

MAX_CONNECTIONS = 16
EXCHANGE_TIMEOUT_S = 10.0
MAX_HEAD_BYTES = 8192

# The scraper went away or sent garbage: nothing to log.
QUIET = (trio.BrokenResourceError, trio.ClosedResourceError, h11.ProtocolError)

Renderer = Callable[[str | None], tuple[bytes, str]]


class MetricsServer:
    def __init__(self, address: TcpAddress, render: Renderer) -> None:
        self.address = address
        self._render = render
        self.bound_address: TcpAddress | None = None
        self._slots = trio.CapacityLimiter(MAX_CONNECTIONS)
        self.scrapes = 0

    async def run(
        self, *, task_status: trio.TaskStatus[TcpAddress] = trio.TASK_STATUS_IGNORED
    ) -> None:
        listeners = await open_listeners(self.address, "metrics.http")
        try:
            name = listeners[0].socket.getsockname()
            self.bound_address = TcpAddress(name[0], name[1])
            log.info("metrics listening", address=str(self.bound_address))
            task_status.started(self.bound_address)
            await trio.serve_listeners(self._handle, listeners)
        finally:
            self.bound_address = None
            for listener in listeners:
                await trio.aclose_forcefully(listener)

    async def _handle(self, stream: trio.SocketStream) -> None:
        await serve_in_slot(stream, self._slots, self._exchange_in_time, quiet=QUIET)

    async def _exchange_in_time(self, stream: trio.SocketStream) -> None:
        try:
            with trio.move_on_after(EXCHANGE_TIMEOUT_S):
                await self._exchange(stream)
        except QUIET:
            raise
        except Exception:
            # A bug in rendering must cost one scrape, never the listener.
            log.exception("metrics request failed")

    async def _exchange(self, stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD_BYTES)
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = await stream.receive_some(MAX_HEAD_BYTES)
                conn.receive_data(data)
                if not data:
                    return
                continue
            if isinstance(event, h11.Request):
                break
            return
        path = event.target.partition(b"?")[0]
        accept = None
        for name, value in event.headers:
            if name == b"accept":
                accept = value.decode("latin-1")
        if path != b"/metrics":
            status, body, ctype = 404, b"not found; try /metrics\n", "text/plain"
        elif event.method not in (b"GET", b"HEAD"):
            status, body, ctype = 405, b"use GET\n", "text/plain"
        else:
            body, ctype = self._render(accept)
            status = 200
            self.scrapes += 1
        headers = [
            ("Content-Type", ctype),
            ("Content-Length", str(len(body))),
            ("Connection", "close"),
        ]
        reason = {200: b"OK", 404: b"Not Found", 405: b"Method Not Allowed"}[status]
        out = conn.send(h11.Response(status_code=status, headers=headers, reason=reason)) or b""
        if event.method != b"HEAD":
            out += conn.send(h11.Data(data=body)) or b""
        out += conn.send(h11.EndOfMessage()) or b""
        await stream.send_all(out)
