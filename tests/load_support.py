"""A steady, open-loop HTTP load for fault tests and the fault benchmark.

Requests go out at a fixed rate whatever happens to earlier ones (a closed
loop would slow down exactly when a fault makes replies late, and hide it).
Each request has a client timeout of the function's deadline plus a margin:
a request not answered by then is counted as *hung*, which the daemon must
never let happen. Every request sent is accounted for exactly once::

    sent == ok + errors + hung + broken

where ``errors`` are replies with a status other than 200 (by status) and
``broken`` are transport failures (connection refused or reset, no reply).

From a synchronous test::

    with BackgroundLoad(daemon.url, "echo", rate=100, duration=3, timeout_s=1.5) as load:
        ...inject a fault...
    report = load.report  # after the with block: the load has finished
    assert report.hung == 0 and report.accounted

From trio code (the benchmark): ``await run_steady_load(...)``. Times are
``time.monotonic()`` seconds (one clock for every thread and process of the
host), so a test compares them with its own fault timestamps.
"""

from __future__ import annotations

import json
import statistics
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import trio

# Reply heads are small; a bigger one means the peer is not our daemon.
MAX_HEAD_BYTES = 64 * 1024

EventSource = Callable[[int], Any]

# The function the fault tests and the benchmark load: sleeps as asked, says who ran it.
SLEEPY_HANDLER = """
import os, time
def handler(event, context):
    if isinstance(event, dict) and event.get("sleep"):
        time.sleep(event["sleep"])
    return {"pid": os.getpid()}
"""
# A build that cannot even be imported: a crash loop.
BROKEN_ON_IMPORT = """
raise RuntimeError("config missing")
def handler(event, context):
    return {"pid": 0}
"""


@dataclass(slots=True)
class Outcome:
    """What happened to one request of the load."""

    seq: int
    sent_at: float  # monotonic
    finished_at: float  # monotonic: reply read, or gave up
    kind: str  # "ok" | "error" | "hung" | "broken"
    status: int | None = None  # None: no reply at all
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    detail: str = ""  # for "broken": the transport error

    @property
    def latency_s(self) -> float:
        return self.finished_at - self.sent_at

    @property
    def error(self) -> dict[str, Any]:
        """The ``{"error": {...}}`` object of an error reply ({} if there is none)."""
        try:
            doc = json.loads(self.body)
        except ValueError:
            return {}
        err = doc.get("error") if isinstance(doc, dict) else None
        return err if isinstance(err, dict) else {}

    def describe(self) -> str:
        what = f"#{self.seq} {self.kind} after {self.latency_s * 1000:.0f} ms"
        if self.status is not None:
            what += f" status {self.status}"
        if self.kind == "error":
            what += f" {self.body[:200]!r}"
        if self.detail:
            what += f" ({self.detail})"
        return what


@dataclass
class LoadReport:
    outcomes: list[Outcome]
    sent: int  # requests the generator started; each has exactly one outcome

    @property
    def ok(self) -> int:
        return sum(1 for o in self.outcomes if o.kind == "ok")

    @property
    def errors(self) -> Counter[int]:
        """Replies that were not 200, by status."""
        return Counter(o.status for o in self.outcomes if o.kind == "error" and o.status)

    @property
    def hung(self) -> int:
        return sum(1 for o in self.outcomes if o.kind == "hung")

    @property
    def broken(self) -> int:
        return sum(1 for o in self.outcomes if o.kind == "broken")

    @property
    def failed(self) -> int:
        return len(self.outcomes) - self.ok

    @property
    def accounted(self) -> bool:
        return (
            self.sent
            == len(self.outcomes)
            == (self.ok + sum(self.errors.values()) + self.hung + self.broken)
        )

    @property
    def failed_share(self) -> float:
        return self.failed / len(self.outcomes) if self.outcomes else 0.0

    def of_kind(self, kind: str) -> list[Outcome]:
        return [o for o in self.outcomes if o.kind == kind]

    def latency_ms(self, p: float) -> float:
        """The ``p``-th percentile of answered requests' latency (nan if none)."""
        data = sorted(o.latency_s * 1000 for o in self.outcomes if o.status is not None)
        if not data:
            return float("nan")
        if p == 50:
            return statistics.median(data)
        return data[min(len(data) - 1, round(p / 100 * (len(data) - 1)))]

    def window(self, start: float, end: float) -> LoadReport:
        """The requests sent in ``[start, end)`` (monotonic times)."""
        picked = [o for o in self.outcomes if start <= o.sent_at < end]
        return LoadReport(picked, len(picked))

    def finished_in(self, start: float, end: float) -> LoadReport:
        """The requests that finished in ``[start, end)``: those a fault at
        ``start`` could touch, including the one in flight when it struck."""
        picked = [o for o in self.outcomes if start <= o.finished_at < end]
        return LoadReport(picked, len(picked))

    def first_ok_sent_after(self, t: float) -> Outcome | None:
        """The first success among requests *sent* after ``t`` (recovery)."""
        later = [o for o in self.outcomes if o.kind == "ok" and o.sent_at >= t]
        return min(later, key=lambda o: o.finished_at, default=None)

    def summary(self) -> str:
        errors = ", ".join(f"{status}: {n}" for status, n in sorted(self.errors.items()))
        return (
            f"sent {self.sent}, ok {self.ok}, errors {{{errors}}}, hung {self.hung}, "
            f"broken {self.broken}; latency p50 {self.latency_ms(50):.1f} ms, "
            f"p99 {self.latency_ms(99):.1f} ms"
        )


class _Connections:
    """Keep-alive connections to one address; a connection in use is never shared."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.idle: list[tuple[trio.SocketStream, bytearray]] = []

    async def take(self) -> tuple[trio.SocketStream, bytearray]:
        if self.idle:
            return self.idle.pop()
        return await trio.open_tcp_stream(self.host, self.port), bytearray()

    def give_back(self, conn: tuple[trio.SocketStream, bytearray]) -> None:
        self.idle.append(conn)

    async def aclose(self) -> None:
        for stream, _ in self.idle:
            await stream.aclose()
        self.idle.clear()


async def _read_reply(
    stream: trio.SocketStream, buf: bytearray
) -> tuple[int, dict[str, str], bytes]:
    """Status, headers (lower-case names) and body of one Content-Length framed reply."""
    while (end := buf.find(b"\r\n\r\n")) < 0:
        if len(buf) > MAX_HEAD_BYTES:
            raise ConnectionError("reply head too large")
        chunk = await stream.receive_some(65536)
        if not chunk:
            raise ConnectionError("the server closed the connection before replying")
        buf += chunk
    lines = bytes(buf[:end]).decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    total = end + 4 + int(headers.get("content-length", "0"))
    while len(buf) < total:
        chunk = await stream.receive_some(65536)
        if not chunk:
            raise ConnectionError("the server closed the connection mid-reply")
        buf += chunk
    body = bytes(buf[end + 4 : total])
    del buf[:total]
    return status, headers, body


def _request_bytes(host: str, port: int, path: str, body: bytes, headers: dict[str, str]) -> bytes:
    extra = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    return (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n{extra}\r\n"
    ).encode() + body


async def run_steady_load(
    url: str,
    function: str,
    *,
    rate: float,
    duration: float,
    timeout_s: float,
    event: Any | EventSource = None,
    headers: dict[str, str] | None = None,
    stop: threading.Event | None = None,
    max_in_flight: int | None = None,
) -> LoadReport:
    """Send ``rate`` requests/s to ``function`` for ``duration`` s; wait for every reply.

    ``event`` is the JSON event, or a callable from the request's sequence number
    to it. ``timeout_s`` is the client timeout of each request (deadline + margin).
    ``stop`` (set from another thread) ends sending early. Returns once every
    request has an outcome, at most ``duration + timeout_s`` (plus a connect) later.

    ``max_in_flight`` caps the requests awaiting a reply: the next one waits
    for a slot, so ``rate`` becomes an upper bound. For a test whose point is
    not overload (every request must succeed), an open loop faster than a
    loaded machine serves only queues requests until their deadlines pass.
    """
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    path = f"/v1/invoke/{function}"
    extra = dict(headers or {})
    make_event: EventSource = event if callable(event) else (lambda seq: event or {})
    conns = _Connections(host, port)
    outcomes: list[Outcome] = []
    count = max(1, round(rate * duration))

    slots = trio.Semaphore(max_in_flight or count)

    async def one(seq: int) -> None:
        try:
            await _one(seq)
        finally:
            slots.release()

    async def _one(seq: int) -> None:
        body = json.dumps(make_event(seq)).encode()
        request = _request_bytes(host, port, path, body, extra)
        sent_at = time.monotonic()
        conn: tuple[trio.SocketStream, bytearray] | None = None
        outcome = Outcome(seq, sent_at, sent_at, "hung")
        with trio.move_on_at(trio.current_time() + timeout_s):
            try:
                conn = await conns.take()
                await conn[0].send_all(request)
                status, reply_headers, reply = await _read_reply(*conn)
            except (OSError, trio.BrokenResourceError, ConnectionError, ValueError) as exc:
                outcome = Outcome(
                    seq, sent_at, time.monotonic(), "broken", detail=f"{type(exc).__name__}: {exc}"
                )
                if conn is not None:
                    await trio.aclose_forcefully(conn[0])
                    conn = None
            else:
                kind = "ok" if status == 200 else "error"
                outcome = Outcome(
                    seq, sent_at, time.monotonic(), kind, status, reply, reply_headers
                )
                if reply_headers.get("connection", "").lower() == "close":
                    await trio.aclose_forcefully(conn[0])
                else:
                    conns.give_back(conn)
                conn = None
        if outcome.kind == "hung":
            outcome.finished_at = time.monotonic()
            if conn is not None:  # its reply may still come: the connection is spoilt
                await trio.aclose_forcefully(conn[0])
        outcomes.append(outcome)

    sent = 0
    async with trio.open_nursery() as nursery:
        start = trio.current_time()
        for seq in range(count):
            if stop is not None and stop.is_set():
                break
            await trio.sleep_until(start + seq / rate)
            await slots.acquire()
            nursery.start_soon(one, seq)
            sent += 1
    await conns.aclose()
    outcomes.sort(key=lambda o: o.seq)
    return LoadReport(outcomes, sent)


class BackgroundLoad:
    """:func:`run_steady_load` on a thread, for synchronous tests and scripts.

    As a context manager: the load starts on entry; on exit it runs to its end
    (or stops early after an exception) and ``report`` holds the result.
    """

    def __init__(
        self,
        url: str,
        function: str,
        *,
        rate: float,
        duration: float,
        timeout_s: float,
        event: Any | EventSource = None,
        headers: dict[str, str] | None = None,
        max_in_flight: int | None = None,
    ) -> None:
        self.duration, self.timeout_s = duration, timeout_s
        self._stop = threading.Event()
        self._report: LoadReport | None = None
        self._error: BaseException | None = None
        self.started_at = 0.0
        kwargs = dict(
            rate=rate,
            duration=duration,
            timeout_s=timeout_s,
            event=event,
            headers=headers,
            max_in_flight=max_in_flight,
        )
        self._thread = threading.Thread(
            target=self._run, args=(url, function, kwargs), name=f"load {function}", daemon=True
        )

    def _run(self, url: str, function: str, kwargs: dict[str, Any]) -> None:
        try:
            self._report = trio.run(
                lambda: run_steady_load(url, function, stop=self._stop, **kwargs)
            )
        except BaseException as exc:  # surfaced by wait()
            self._error = exc

    def start(self) -> BackgroundLoad:
        self.started_at = time.monotonic()
        self._thread.start()
        return self

    def stop(self) -> None:
        """Send no more requests (those in flight still get their outcome)."""
        self._stop.set()

    def wait(self) -> LoadReport:
        # The load's own bound: every request ends within timeout_s of being sent.
        self._thread.join(self.duration + self.timeout_s + 30)
        if self._thread.is_alive():
            raise AssertionError("the load generator did not finish")
        if self._error is not None:
            raise self._error
        assert self._report is not None
        return self._report

    @property
    def report(self) -> LoadReport:
        return self.wait()

    @property
    def thread(self) -> threading.Thread:
        """The thread the load runs on (e.g. to read its scheduling stats)."""
        return self._thread

    def __enter__(self) -> BackgroundLoad:
        return self.start()

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if exc_type is not None:
            self.stop()
        self.wait()
