"""Fetch images before a request needs them, without ever slowing one that does.

Sources of work for :class:`Prefetcher`:

- **hints** — :meth:`Prefetcher.hint` (the ``prefetch`` admin command now; the
  scheduler protocol will send the same hint later);
- **local prediction** — :class:`InvocationHistory` samples the node's own
  per-function request counters and expects a function again when it was
  invoked recently (within ``predict_window_s``) or when its arrivals are
  periodic and the next one is due; such a function whose image is not on disk
  (evicted, quarantined, never fetched) is prefetched;
- **refetch** — an image the scrub quarantined is fetched again at once.

Live first: prefetch runs at most ``concurrency`` fetches and starts none while
a request is waiting for a cold fetch (:class:`LiveFetches`). A live request for
an image that is being prefetched joins that fetch (the store's singleflight),
so prefetching never makes a request wait longer than it would have anyway.
The queue is bounded; a full queue refuses the hint with a clear error.
"""

from __future__ import annotations

import itertools
import statistics
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import trio

from cache.errors import CacheError
from cache.format import is_digest_hex
from cache.origin import Origin
from cache.store import ImageStore
from huselet.code.counters import PrefetchCounter
from huselet.errors import BadRequest, HuseletError
from huselet.log import get_logger
from huselet.timegrid import sleep_on_grid

log = get_logger("prefetch")

MAX_RECENT_OUTCOMES = 256
LIVE_RECHECK_S = 1.0  # how often a prefetch waiting for live fetches looks again


class PrefetchQueueFull(HuseletError):
    status, code = 503, "prefetch_queue_full"


class LiveFetches:
    """Counts cold fetches that requests are waiting for; prefetch yields to them."""

    def __init__(self) -> None:
        self.active = 0
        self._idle = trio.Event()
        self._idle.set()

    @contextmanager
    def fetching(self) -> Iterator[None]:
        if self.active == 0:
            self._idle = trio.Event()
        self.active += 1
        try:
            yield
        finally:
            self.active -= 1
            if self.active == 0:
                self._idle.set()

    async def wait_idle(self, timeout: float) -> bool:
        """Wait until no live fetch runs, at most ``timeout`` seconds; True if idle."""
        with trio.move_on_after(timeout):
            await self._idle.wait()
        return self.active == 0


class InvocationHistory:
    """When each function was seen invoked, sampled from monotonically growing counters.

    One arrival is recorded per sample in which a function's counter grew, so a
    burst counts once: what matters for prefetching is *when* a function runs,
    not how often within a tick. Bounded per function and in functions.
    """

    def __init__(self, *, per_function: int = 16, max_functions: int = 4096) -> None:
        self._last_count: dict[str, int] = {}
        self._arrivals: OrderedDict[str, deque[float]] = OrderedDict()
        self._per_function = per_function
        self._max_functions = max_functions

    def observe(self, counts: Mapping[str, int], now: float) -> None:
        for name, count in counts.items():
            previous = self._last_count.get(name, 0)
            self._last_count[name] = count
            if count > previous:
                self.record(name, now)

    def record(self, name: str, now: float) -> None:
        arrivals = self._arrivals.pop(name, None) or deque(maxlen=self._per_function)
        arrivals.append(now)
        self._arrivals[name] = arrivals  # most recently invoked last
        while len(self._arrivals) > self._max_functions:
            old, _ = self._arrivals.popitem(last=False)
            self._last_count.pop(old, None)

    def arrivals(self, name: str) -> list[float]:
        return list(self._arrivals.get(name, ()))

    def expected(self, now: float, *, window_s: float, lead_s: float) -> list[str]:
        """Functions likely to be invoked soon: recently, or periodic and due."""
        out = []
        for name, arrivals in self._arrivals.items():
            if now - arrivals[-1] <= window_s or _periodic_due(list(arrivals), now, lead_s):
                out.append(name)
        return out


def _periodic_due(arrivals: list[float], now: float, lead_s: float) -> bool:
    """Three or more arrivals at a steady period, and the next one is about due."""
    if len(arrivals) < 3:
        return False
    gaps = [b - a for a, b in itertools.pairwise(arrivals)]
    period = statistics.median(gaps)
    if period <= 0 or max(gaps) > 1.5 * period or min(gaps) < period / 1.5:
        return False  # not periodic enough to bet a fetch on
    due = arrivals[-1] + period
    return due - max(lead_s, 0.1 * period) <= now <= due + period


@dataclass
class _Job:
    digest: str
    origin: Origin
    reason: str
    function: str | None
    done: trio.Event = field(default_factory=trio.Event)
    error: str | None = None

    def log_fields(self) -> dict[str, Any]:
        """What every log record about this job names."""
        return {"digest": self.digest, "reason": self.reason, "function": self.function}


Resolve = Callable[[str], "tuple[str, Origin] | None"]


@dataclass(frozen=True)
class PrefetchTuning:
    """How much the prefetcher does at once and how often it predicts (``[cache]`` keys)."""

    concurrency: int = 2  # fetches running at once
    queue_size: int = 256  # hints waiting; more are refused, never dropped silently
    predict_window_s: float = 3600.0  # how far back the invocation history looks
    tick_s: float = 5.0  # how often the predictor samples the invocation counters
    fetch_timeout_s: float = 600.0  # one whole fetch: every attempt and the backoff between


class Prefetcher:
    """Bounded queue of images to fetch ahead of need. Start with :meth:`run`.

    ``resolve`` and ``invocation_counts`` (both or neither) turn on prediction:
    images of functions invoked periodically are fetched before they are due.
    """

    def __init__(
        self,
        store: ImageStore,
        live: LiveFetches,
        tuning: PrefetchTuning | None = None,
        *,
        resolve: Resolve | None = None,
        invocation_counts: Callable[[], Mapping[str, int]] | None = None,
    ) -> None:
        self.store = store
        self.live = live
        self.tuning = tuning = tuning or PrefetchTuning()
        self.resolve = resolve
        self.invocation_counts = invocation_counts
        self.history = InvocationHistory()
        self._send, self._receive = trio.open_memory_channel[_Job](tuning.queue_size)
        self._pending: dict[str, _Job] = {}  # queued or fetching
        self._fetching: set[str] = set()
        self._recent: OrderedDict[str, tuple[str | None, float]] = OrderedDict()
        # Digest -> when prediction last asked for it: a digest that will not
        # stay on disk (budget too small) must not be refetched every tick.
        self._predicted_at: OrderedDict[str, float] = OrderedDict()
        self.predict_retry_s = max(60.0, 6 * tuning.tick_s)
        self.counters: dict[str, int] = {counter: 0 for counter in PrefetchCounter}

    # -- hints ------------------------------------------------------------------------

    def hint(
        self, digest: str, origin: Origin, *, reason: str = "hint", function: str | None = None
    ) -> str:
        """Queue a fetch; return ``"present"``, ``"queued"`` or ``"pending"`` (already queued).

        Raises :class:`BadRequest` for a malformed digest, :class:`PrefetchQueueFull`.
        """
        if not is_digest_hex(digest):
            raise BadRequest(f"not a sha256 hex digest: {digest[:80]!r}")
        if self.store.contains(digest):
            self.counters[PrefetchCounter.PRESENT] += 1
            return "present"
        if digest in self._pending:
            return "pending"
        job = _Job(digest, origin, reason, function)
        try:
            self._send.send_nowait(job)
        except trio.WouldBlock:
            raise PrefetchQueueFull(
                f"the prefetch queue is full ({self.tuning.queue_size} images); try again later",
                retry_after_s=5,
            ) from None
        self._pending[digest] = job
        self.counters[PrefetchCounter.QUEUED] += 1
        log.info("prefetch queued", digest=digest, reason=reason, function=function)
        return "queued"

    async def wait(self, digest: str, timeout: float) -> str | None:
        """Wait for a queued fetch; ``None`` when installed, else the failure's message."""
        job = self._pending.get(digest)
        if job is not None:
            with trio.move_on_after(timeout):
                await job.done.wait()
            if not job.done.is_set():
                return f"still fetching after {timeout:g}s"
            return job.error
        if self.store.contains(digest):
            return None
        outcome = self._recent.get(digest)
        return outcome[0] if outcome else "not queued"

    # -- running ------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            for _ in range(self.tuning.concurrency):
                nursery.start_soon(self._worker)
            if self.invocation_counts is not None and self.resolve is not None:
                nursery.start_soon(self._predict_loop)
            task_status.started()

    async def _worker(self) -> None:
        async for job in self._receive:
            try:
                await self._fetch(job)
            finally:
                self._pending.pop(job.digest, None)
                self._fetching.discard(job.digest)
                self._recent[job.digest] = (job.error, trio.current_time())
                while len(self._recent) > MAX_RECENT_OUTCOMES:
                    self._recent.popitem(last=False)
                job.done.set()

    async def _fetch(self, job: _Job) -> None:
        # Live first: a request waiting on a cold fetch gets the bandwidth.
        while self.live.active:
            await self.live.wait_idle(LIVE_RECHECK_S)
        if self.store.contains(job.digest):  # a live request fetched it meanwhile
            self.counters[PrefetchCounter.PRESENT] += 1
            return
        self._fetching.add(job.digest)
        started = trio.current_time()
        try:
            await self.store.ensure(job.digest, job.origin, timeout=self.tuning.fetch_timeout_s)
        except Exception as exc:
            if not isinstance(exc, CacheError):
                log.exception("prefetch failed unexpectedly", digest=job.digest)
            job.error = str(exc)
            self.counters[PrefetchCounter.FAILED] += 1
            log.warning(
                "prefetch failed", **job.log_fields(), origin=job.origin.describe(), error=str(exc)
            )
            return
        self.counters[PrefetchCounter.FETCHED] += 1
        ms = round((trio.current_time() - started) * 1000, 1)
        log.info("prefetched", **job.log_fields(), ms=ms)

    async def _predict_loop(self) -> None:
        assert self.invocation_counts is not None
        while True:
            # On the shared grid: wakes with the health loops, not a wake-up of its own.
            await sleep_on_grid(self.tuning.tick_s)
            self.predict_once()

    def predict_once(self) -> list[str]:
        """One tick of local prediction; returns the digests it queued."""
        assert self.invocation_counts is not None and self.resolve is not None
        now = trio.current_time()
        self.history.observe(self.invocation_counts(), now)
        queued = []
        for name in self.history.expected(
            now, window_s=self.tuning.predict_window_s, lead_s=2 * self.tuning.tick_s
        ):
            source = self.resolve(name)
            if source is None:
                continue  # a plain directory, or not resolved yet
            digest, origin = source
            if self.store.contains(digest) or digest in self._pending:
                continue
            last = self._predicted_at.get(digest)
            if last is not None and now - last < self.predict_retry_s:
                continue
            self._predicted_at[digest] = now
            self._predicted_at.move_to_end(digest)
            while len(self._predicted_at) > MAX_RECENT_OUTCOMES:
                self._predicted_at.popitem(last=False)
            try:
                if self.hint(digest, origin, reason="predicted", function=name) == "queued":
                    self.counters[PrefetchCounter.PREDICTED] += 1
                    queued.append(digest)
            except PrefetchQueueFull:
                break  # hints and refetches come first; try again next tick
        return queued

    def describe(self) -> dict[str, Any]:
        return {
            "concurrency": self.tuning.concurrency,
            "queue_size": self.tuning.queue_size,
            "queued": len(self._pending) - len(self._fetching),
            "fetching": sorted(self._fetching),
            "live_fetches": self.live.active,
            "counters": dict(self.counters),
        }
