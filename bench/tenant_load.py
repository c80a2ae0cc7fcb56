"""Load shapes of ``bench_auth``: paced quiet traffic and a fixed-rate flood of one tenant.

Both are *open loop*: a request is due at a fixed time whatever the node does,
and a latency is measured from when the request was due (not from when it
could be sent), so a node that stalls is charged for the whole stall (no
coordinated omission).

- :func:`paced` sends pre-built requests at ``rate`` per second over a few
  keep-alive connections and records each one's latency and status. A
  request's clock starts when it was due, or, when the client had to sleep
  until then, when it woke: trio's timers wake up to a millisecond late (epoll
  counts whole milliseconds) and that lateness is the client's, not the node's
  (it was ~1.3 ms of a 2 ms p50 against a server that answers at once). A
  reply that comes late still makes the next request late from its due time.
- :func:`send_framed` sends pre-signed framed calls (:func:`signed_calls`) the
  same way, pipelined on one framed connection.
- :func:`p` is a percentile.
- :func:`flood_process` is the noisy tenant, in its own process: it offers
  ``rate`` signed requests per second over ``connections`` connections,
  pipelined (it does not wait for a reply before sending the next), reopens a
  connection the node closes, and reports what it offered, what it could send,
  the statuses it got, and its own CPU time, so a reader can see how much of
  the machine the flood itself took.
"""

from __future__ import annotations

import itertools
import os
import socket
import struct
import time
from dataclasses import dataclass, field
from typing import Any

import trio
from loadgen import _read_reply

from huselet.client.framed_trio import open_framed_client
from huselet.client.signing import AccessKey, format_timestamp, sign_request
from protocol.ingress_signing import CallAuth, sign_call

BODY = b'{"name": "bench"}'
QUIET = AccessKey("HKQUIET000000001", "quiet-secret-0123456789abcdefghij")
NOISY = AccessKey("HKNOISY000000001", "noisy-secret-0123456789abcdefghij")
_NONCES = itertools.count()
FLOOD_TICK_S = 0.05  # a flood connection writes what is due at most this often
_LINGER_0 = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends RST


def raw_request(port: int, function: str, key: AccessKey | None, *, compact: bool = False) -> bytes:
    """A POST to ``function``, signed with ``key`` (None: unsigned), as bytes on the wire."""
    target = f"/v1/invoke/{function}"
    headers = {"Host": f"127.0.0.1:{port}", "Content-Type": "application/json"}
    if key is not None:
        headers.update(sign_request(key, "POST", target, headers, BODY, compact=compact))
    lines = [f"POST {target} HTTP/1.1"] + [f"{k}: {v}" for k, v in headers.items()]
    lines.append(f"Content-Length: {len(BODY)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + BODY


async def send_all(
    port: int, requests: list[bytes], concurrency: int
) -> tuple[list[float], dict[int, int]]:
    """Send every request once over ``concurrency`` keep-alive connections (closed loop)."""
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    queue = iter(requests)

    async def client() -> None:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        buf = bytearray()
        async with stream:
            for request in queue:
                t0 = time.perf_counter()
                await stream.send_all(request)
                status, _ = await _read_reply(stream, buf)
                latencies.append((time.perf_counter() - t0) * 1000)
                statuses[status] = statuses.get(status, 0) + 1

    async with trio.open_nursery() as nursery:
        for _ in range(concurrency):
            nursery.start_soon(client)
    return latencies, statuses


def signed_calls(function: str, key: AccessKey, n: int) -> list[CallAuth]:
    """``n`` calls of ``function`` with BODY, each signed now with its own nonce."""
    date = format_timestamp()
    # Nonces never repeat within a process: the same call in the same second would
    # be a replay (401), and batches are signed back to back.
    return [
        sign_call(key.key_id, key.secret, function, BODY, "json", None, date=date, nonce=f"n{i}")
        for i in itertools.islice(_NONCES, n)
    ]


async def send_framed(
    port: int, function: str, calls: list[CallAuth], concurrency: int
) -> tuple[list[float], dict[int, int]]:
    """Send pre-signed calls (forwarded as is) over one framed connection, ``concurrency``
    in flight (closed loop): the client signs nothing while the clock runs."""
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    queue = iter(calls)
    async with open_framed_client(f"127.0.0.1:{port}") as client:

        async def caller() -> None:
            for auth in queue:
                t0 = time.perf_counter()
                reply = await client.call(function, BODY, "json", auth=auth)
                latencies.append((time.perf_counter() - t0) * 1000)
                statuses[reply.status] = statuses.get(reply.status, 0) + 1

        async with trio.open_nursery() as nursery:
            for _ in range(concurrency):
                nursery.start_soon(caller)
    return latencies, statuses


async def paced(
    port: int,
    requests: list[bytes],
    rate: float,
    connections: int,
    begins: list[float] | None = None,
) -> tuple[list[float], dict[int, int]]:
    """Request ``i`` is due at ``i / rate`` s; latency (ms) runs from then to its reply.

    ``begins``: each latency's start is appended there (``time.monotonic``, in
    the order of the latencies), to line slow samples up with the daemon's loop.
    """
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    start = trio.current_time() + 0.05
    to_monotonic = time.monotonic() - trio.current_time()

    async def client(first: int) -> None:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        buf = bytearray()
        async with stream:
            for i in range(first, len(requests), connections):
                due = begin = start + i / rate
                if trio.current_time() < due:
                    await trio.sleep_until(due)
                    begin = trio.current_time()  # the timer's lateness is ours
                await stream.send_all(requests[i])
                status, _ = await _read_reply(stream, buf)
                latencies.append((trio.current_time() - begin) * 1000)
                if begins is not None:
                    begins.append(begin + to_monotonic)
                statuses[status] = statuses.get(status, 0) + 1

    async with trio.open_nursery() as nursery:
        for c in range(connections):
            nursery.start_soon(client, c)
    return latencies, statuses


@dataclass
class FloodReport:
    offered: int = 0  # requests that were due
    sent: int = 0  # requests the node's socket took
    statuses: dict[int, int] = field(default_factory=dict)
    connects: int = 0  # connections opened (the node closes persistent offenders)
    cpu_s: float = 0.0  # the flood process's own user+system CPU
    wall_s: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "offered": self.offered,
            "sent": self.sent,
            "statuses": self.statuses,
            "connects": self.connects,
            "cpu_s": self.cpu_s,
            "wall_s": self.wall_s,
            "cpu_pct_of_a_core": 100 * self.cpu_s / self.wall_s if self.wall_s else 0.0,
        }


async def _flood(
    port: int,
    requests: list[bytes],
    rate: float,
    connections: int,
    stop: Any,
    report: FloodReport,
    reset: bool,
) -> None:
    per_connection = rate / connections
    counter = iter(range(1 << 62))
    open_streams: set[trio.SocketStream] = set()

    async def connection_loop(index: int) -> None:
        # Slot k of this connection is due at start + k / per_connection; slots
        # missed while the socket would not take more (or beyond one tick's batch)
        # are counted as offered, not sent later.
        start = trio.current_time() + index / rate
        slot = 0
        while not stop.is_set():
            report.connects += 1
            try:
                stream = await trio.open_tcp_stream("127.0.0.1", port)
            except OSError:
                await trio.sleep(0.01)
                continue
            open_streams.add(stream)
            async with stream, trio.open_nursery() as conn:

                async def reader(stream: trio.SocketStream = stream) -> None:
                    buf = bytearray()
                    try:
                        while True:
                            status, close = await _read_reply(stream, buf)
                            report.statuses[status] = report.statuses.get(status, 0) + 1
                            if close:
                                break
                    except (ConnectionError, trio.BrokenResourceError, trio.ClosedResourceError):
                        pass
                    conn.cancel_scope.cancel()

                conn.start_soon(reader)
                try:
                    while not stop.is_set():
                        # Every slot due by now, in one write (at most one wake-up per
                        # FLOOD_TICK_S: the flood's own CPU stays small for its rate).
                        due = int((trio.current_time() - start) * per_connection) + 1 - slot
                        if due <= 0:
                            next_at = start + slot / per_connection
                            await trio.sleep_until(max(next_at, trio.current_time() + FLOOD_TICK_S))
                            continue
                        report.offered += due
                        slot += due
                        batch = min(due, max(1, int(per_connection * FLOOD_TICK_S) + 1))
                        # Taken before the await: connections share the counter.
                        picked = [requests[next(counter) % len(requests)] for _ in range(batch)]
                        await stream.send_all(b"".join(picked))
                        report.sent += batch
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass
                conn.cancel_scope.cancel()
            open_streams.discard(stream)

    async def watch_stop() -> None:
        while not stop.is_set():
            await trio.sleep(0.05)
        if reset:  # close with RST (linger 0): the node drops what it buffered of us
            for stream in open_streams:
                if stream.socket.fileno() != -1:  # not one being closed right now
                    stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_0)
        nursery.cancel_scope.cancel()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(watch_stop)
        for index in range(connections):
            nursery.start_soon(connection_loop, index)


# --pin: the measured node and the quiet tenant's client on one CPU, the flood's
# generator and the node it is sent to "elsewhere" on the other, as if the flood
# came from another machine (see the README's bench_auth part 3).
PIN_NODE, PIN_FLOOD = {0}, {1}


def flood_process(
    port: int,
    key: AccessKey,
    function: str,
    rate: float,
    connections: int,
    count: int,
    started: Any,
    stop: Any,
    out: Any,
    nice: int = 0,
    cpus: set[int] | None = None,
    reset: bool = False,
) -> None:
    """Offer ``rate`` req/s of ``key``'s signed requests until ``stop``; put a FloodReport.

    The requests are signed before the clock starts (``count`` of them, reused
    round-robin after that: an over-rate tenant is refused before its signature
    is even checked), so the measured CPU is the flood's sending, not its signing.
    ``nice``: the process's niceness (a real flood comes from other machines; here
    its sending, and the kernel's loopback work done in its context, would
    otherwise compete with the quiet tenant's client and the node for 2 cores).
    ``reset``: leave by resetting the connections instead of closing them.
    """
    if nice:
        os.nice(nice)
    if cpus is not None:  # --pin: off the node's CPU, as a flood from another machine
        os.sched_setaffinity(0, cpus)
    requests = [raw_request(port, function, key) for _ in range(count)]
    report = FloodReport()
    t0, cpu0 = time.perf_counter(), _own_cpu()
    started.set()
    trio.run(_flood, port, requests, rate, connections, stop, report, reset)
    report.wall_s = time.perf_counter() - t0
    report.cpu_s = _own_cpu() - cpu0
    out.put(report.as_dict())


def _own_cpu() -> float:
    times = os.times()
    return times.user + times.system


def p(data: list[float], q: float) -> float:
    s = sorted(data)
    return s[min(len(s) - 1, round(q / 100 * (len(s) - 1)))]
