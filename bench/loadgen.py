"""A small closed-loop HTTP/1.1 load generator on trio (keep-alive connections).

Each of ``concurrency`` connections sends one pre-built request, reads the
whole reply, and sends the next, for ``duration`` seconds after a warm-up.
Latency per request is measured with ``time.perf_counter``. Replies are
parsed just enough (status line and Content-Length) to stay cheap, so the
generator is not the bottleneck it would be with a full client library.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import trio


@dataclass
class LoadResult:
    requests: int
    errors: int
    seconds: float
    latencies_ms: list[float]

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def percentile(self, p: float) -> float:
        if not self.latencies_ms:
            return float("nan")
        data = sorted(self.latencies_ms)
        return data[min(len(data) - 1, round(p / 100 * (len(data) - 1)))]

    @property
    def p50(self) -> float:
        return statistics.median(self.latencies_ms) if self.latencies_ms else float("nan")

    @property
    def p99(self) -> float:
        return self.percentile(99)


def build_request(host: str, port: int, path: str, body: bytes) -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


async def _read_reply(stream: trio.SocketStream, buf: bytearray) -> tuple[int, bool]:
    """Read one reply from ``stream`` (leftovers stay in ``buf``).

    Returns its status and whether the server closes the connection after it
    (gunicorn's sync workers do after every request).
    """
    while True:
        end = buf.find(b"\r\n\r\n")
        if end >= 0:
            head = bytes(buf[:end]).decode("latin-1")
            status = int(head[9:12])
            length = 0
            close = False
            for line in head.split("\r\n")[1:]:
                name, _, value = line.partition(":")
                if name.lower() == "content-length":
                    length = int(value)
                elif name.lower() == "connection":
                    close = value.strip().lower() == "close"
            total = end + 4 + length
            while len(buf) < total:
                chunk = await stream.receive_some(65536)
                if not chunk:
                    raise ConnectionError("server closed the connection")
                buf += chunk
            del buf[:total]
            return status, close
        chunk = await stream.receive_some(65536)
        if not chunk:
            raise ConnectionError("server closed the connection")
        buf += chunk


async def run_load(
    host: str,
    port: int,
    path: str,
    body: bytes,
    *,
    concurrency: int,
    duration: float,
    warmup: float = 1.0,
    on_window: Callable[[str], None] | None = None,
    next_request: Callable[[], bytes] | None = None,
) -> LoadResult:
    """``next_request``: each request's bytes (e.g. each signed once), instead of one
    POST of ``body`` to ``path`` sent again and again."""
    request = build_request(host, port, path, body)

    async def client(record: Callable[[float, bool], None]) -> None:
        while True:  # a new connection whenever the server closes one
            t0 = time.perf_counter()
            stream = await trio.open_tcp_stream(host, port)
            buf = bytearray()
            async with stream:
                while True:
                    await stream.send_all(request if next_request is None else next_request())
                    status, close = await _read_reply(stream, buf)
                    record(t0, status == 200)
                    if close:
                        break
                    t0 = time.perf_counter()

    return await closed_loop(client, concurrency, duration, warmup, on_window)


Client = Callable[[Callable[[float, bool], None]], Awaitable[None]]


async def closed_loop(
    client: Client,
    concurrency: int,
    duration: float,
    warmup: float,
    on_window: Callable[[str], None] | None = None,
) -> LoadResult:
    """Run ``concurrency`` copies of ``client`` for ``warmup`` + ``duration`` seconds.

    A client calls ``record(t0, ok)`` after each reply; only replies inside the
    measured window count. ``on_window("start"/"end")`` marks the window (the
    bench reads the servers' CPU time there).
    """
    latencies: list[float] = []
    counts = {"ok": 0, "err": 0}
    measuring = False

    def record(t0: float, ok: bool) -> None:
        if measuring:
            latencies.append((time.perf_counter() - t0) * 1000)
            counts["ok" if ok else "err"] += 1

    async with trio.open_nursery() as nursery:
        for _ in range(concurrency):
            nursery.start_soon(client, record)
        await trio.sleep(warmup)
        if on_window:
            on_window("start")
        measuring = True
        start = time.perf_counter()
        await trio.sleep(duration)
        measuring = False
        elapsed = time.perf_counter() - start
        if on_window:
            on_window("end")
        nursery.cancel_scope.cancel()
    return LoadResult(counts["ok"], counts["err"], elapsed, latencies)


async def run_framed_load(
    address: str,
    function: str,
    body: bytes,
    *,
    concurrency: int,
    duration: float,
    warmup: float = 1.0,
    on_window: Callable[[str], None] | None = None,
    per_connection: int = 32,
) -> LoadResult:
    """Closed loop over the framed ingress: up to ``per_connection`` calls in
    flight on each connection (a gateway pipelines on a few connections)."""
    from huselet.client.framed_trio import open_framed_client

    connections = max(1, -(-concurrency // per_connection))
    async with contextlib.AsyncExitStack() as stack:
        clients = [
            await stack.enter_async_context(open_framed_client(address)) for _ in range(connections)
        ]
        started = [0]

        async def client(record: Callable[[float, bool], None]) -> None:
            conn = clients[started[0] % connections]  # round robin over the connections
            started[0] += 1
            while True:
                t0 = time.perf_counter()
                reply = await conn.call(function, body, "json")
                record(t0, reply.ok)

        return await closed_loop(client, concurrency, duration, warmup, on_window)
