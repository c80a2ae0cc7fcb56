"""A small closed-loop HTTP/1.1 load generator on trio (keep-alive connections).

Each of ``concurrency`` connections sends one pre-built request, reads the
whole reply, and sends the next, for ``duration`` seconds after a warm-up.
Latency per request is measured with ``time.perf_counter``. Replies are
parsed just enough (status line and Content-Length) to stay cheap, so the
generator is not the bottleneck it would be with a full client library.
"""

from __future__ import annotations

import statistics
import time
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


async def _read_reply(stream: trio.SocketStream, buf: bytearray) -> int:
    """Read one reply from ``stream`` (leftovers stay in ``buf``); return its status."""
    while True:
        end = buf.find(b"\r\n\r\n")
        if end >= 0:
            head = bytes(buf[:end]).decode("latin-1")
            status = int(head[9:12])
            length = 0
            for line in head.split("\r\n")[1:]:
                name, _, value = line.partition(":")
                if name.lower() == "content-length":
                    length = int(value)
            total = end + 4 + length
            while len(buf) < total:
                chunk = await stream.receive_some(65536)
                if not chunk:
                    raise ConnectionError("server closed the connection")
                buf += chunk
            del buf[:total]
            return status
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
) -> LoadResult:
    request = build_request(host, port, path, body)
    latencies: list[float] = []
    counts = {"ok": 0, "err": 0}
    measuring = False

    async def client() -> None:
        stream = await trio.open_tcp_stream(host, port)
        buf = bytearray()
        async with stream:
            while True:
                t0 = time.perf_counter()
                await stream.send_all(request)
                status = await _read_reply(stream, buf)
                if measuring:
                    latencies.append((time.perf_counter() - t0) * 1000)
                    counts["ok" if status == 200 else "err"] += 1

    async with trio.open_nursery() as nursery:
        for _ in range(concurrency):
            nursery.start_soon(client)
        await trio.sleep(warmup)
        measuring = True
        start = time.perf_counter()
        await trio.sleep(duration)
        measuring = False
        elapsed = time.perf_counter() - start
        nursery.cancel_scope.cancel()
    return LoadResult(counts["ok"], counts["err"], elapsed, latencies)
