"""Prefetcher: hints, bounded queue and concurrency, live fetches first, and local
prediction from the node's own invocation history."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from cache_testkit import build_image, variant

from cache.builder import ImageInfo
from cache.origin import DirectoryOrigin, Origin
from cache.store import ImageStore
from huselet.code.prefetch import (
    InvocationHistory,
    LiveFetches,
    Prefetcher,
    PrefetchQueueFull,
    PrefetchTuning,
)
from huselet.errors import BadRequest

MiB = 1 << 20


class GatedOrigin(Origin):
    """A directory origin whose fetches wait at a gate; records concurrency and order."""

    def __init__(self, directory: Path) -> None:
        self.inner = DirectoryOrigin(directory)
        self.gate = trio.Event()
        self.gate.set()
        self.running = 0
        self.max_running = 0
        self.started: list[str] = []

    def describe(self) -> str:
        return "gated"

    async def fetch(self, digest: str, dest: Path, *, max_bytes: int) -> int:
        self.started.append(digest)
        self.running += 1
        self.max_running = max(self.max_running, self.running)
        try:
            await self.gate.wait()
            return await self.inner.fetch(digest, dest, max_bytes=max_bytes)
        finally:
            self.running -= 1


def images(root: Path, count: int) -> list[ImageInfo]:
    return [build_image(root, f"v{i}", variant(str(i))) for i in range(count)]


@asynccontextmanager
async def running(
    root: Path, tuning: PrefetchTuning | None = None, **kw: Any
) -> AsyncIterator[tuple[ImageStore, Prefetcher, LiveFetches]]:
    store = ImageStore(root / "state", disk_budget_bytes=64 * MiB, memory_budget_bytes=64 * MiB)
    live = LiveFetches()
    prefetcher = Prefetcher(store, live, tuning, **kw)
    async with trio.open_nursery() as nursery:
        await nursery.start(store.run)
        await nursery.start(prefetcher.run)
        yield store, prefetcher, live
        nursery.cancel_scope.cancel()


async def test_hints_are_deduplicated_validated_and_bounded(short_tmp: Path) -> None:
    infos = images(short_tmp, 3)
    origin = GatedOrigin(short_tmp / "built")
    origin.gate = trio.Event()  # hold every fetch
    async with running(short_tmp, PrefetchTuning(concurrency=1, queue_size=1)) as (
        store,
        prefetcher,
        _,
    ):
        assert prefetcher.hint(infos[0].digest, origin) == "queued"
        await trio.testing.wait_all_tasks_blocked()  # the worker took it: fetching
        assert prefetcher.hint(infos[0].digest, origin) == "pending"
        assert prefetcher.hint(infos[1].digest, origin) == "queued"  # fills the queue of 1
        with pytest.raises(PrefetchQueueFull) as full:
            prefetcher.hint(infos[2].digest, origin)
        assert full.value.status == 503 and "queue is full" in full.value.message
        with pytest.raises(BadRequest):
            prefetcher.hint("../../etc/passwd", origin)
        origin.gate.set()
        for info in infos[:2]:
            assert await prefetcher.wait(info.digest, 10) is None
            assert store.contains(info.digest)
        assert prefetcher.hint(infos[0].digest, origin) == "present"
        assert prefetcher.describe()["counters"]["fetched"] == 2


async def test_concurrency_is_bounded(short_tmp: Path) -> None:
    infos = images(short_tmp, 6)
    origin = GatedOrigin(short_tmp / "built")
    origin.gate = trio.Event()
    async with running(short_tmp, PrefetchTuning(concurrency=2)) as (store, prefetcher, _):
        for info in infos:
            prefetcher.hint(info.digest, origin)
        await trio.testing.wait_all_tasks_blocked()
        assert origin.running == 2
        origin.gate.set()
        for info in infos:
            assert await prefetcher.wait(info.digest, 10) is None
        assert origin.max_running == 2 and all(store.contains(i.digest) for i in infos)


async def test_live_fetches_go_first(short_tmp: Path) -> None:
    infos = images(short_tmp, 2)
    origin = GatedOrigin(short_tmp / "built")
    async with running(short_tmp, PrefetchTuning(concurrency=2)) as (store, prefetcher, live):
        with live.fetching():  # a request is waiting on a cold fetch
            prefetcher.hint(infos[0].digest, origin)
            await trio.testing.wait_all_tasks_blocked()
            assert origin.started == []  # the prefetch stands aside
            await store.ensure(infos[1].digest, origin)  # the live fetch runs
        assert await prefetcher.wait(infos[0].digest, 10) is None
        assert origin.started == [infos[1].digest, infos[0].digest]


async def test_a_live_request_joins_a_prefetch_in_flight(short_tmp: Path) -> None:
    (info,) = images(short_tmp, 1)
    origin = GatedOrigin(short_tmp / "built")
    origin.gate = trio.Event()
    async with running(short_tmp) as (store, prefetcher, _):
        prefetcher.hint(info.digest, origin)
        await trio.testing.wait_all_tasks_blocked()
        async with trio.open_nursery() as nursery:

            async def live_request() -> None:
                with await store.get(info.digest, origin) as lease:
                    assert lease.digest == info.digest

            nursery.start_soon(live_request)
            await trio.testing.wait_all_tasks_blocked()
            origin.gate.set()
        assert origin.started == [info.digest]  # one fetch served both
        assert store.stats.coalesced == 1


async def test_failed_prefetch_is_reported_not_raised(short_tmp: Path) -> None:
    async with running(short_tmp) as (_, prefetcher, _live):
        missing = "ab" * 32
        prefetcher.hint(missing, DirectoryOrigin(short_tmp / "empty"))
        error = await prefetcher.wait(missing, 10)
        assert error is not None and "is not in" in error
        assert prefetcher.describe()["counters"]["failed"] == 1
        assert await prefetcher.wait("cd" * 32, 1) == "not queued"


# -- prediction ---------------------------------------------------------------------------------


def test_history_expects_recent_and_periodic_functions() -> None:
    history = InvocationHistory()
    counts = {"recent": 0, "daily": 0, "erratic": 0}

    def tick(now: float, *names: str) -> None:
        for name in names:
            counts[name] += 1
        history.observe(dict(counts), now)

    day = 86_400.0
    for i in range(4):
        tick(i * day, "daily")
    for t in (0.0, 1_000.0, 200_000.0):
        tick(t, "erratic")
    tick(3 * day + 10, "recent")
    window = 3600.0
    # Just after the last daily run: recent, not yet due again.
    assert sorted(history.expected(3 * day + 60, window_s=window, lead_s=10)) == [
        "daily",
        "recent",
    ]
    # Mid-period nothing is expected; shortly before the next daily run it is.
    assert history.expected(3.5 * day, window_s=window, lead_s=10) == []
    assert history.expected(4 * day - 600, window_s=window, lead_s=10) == ["daily"]
    # Many requests within one tick are one arrival.
    counts["recent"] += 50
    history.observe(dict(counts), 3 * day + 20)
    assert len(history.arrivals("recent")) == 2


def test_history_is_bounded() -> None:
    history = InvocationHistory(per_function=4, max_functions=3)
    for i in range(10):
        history.record(f"f{i % 5}", float(i))
    assert len(history.expected(100.0, window_s=1e9, lead_s=0)) == 3
    assert history.arrivals("f4") == [9.0]  # evicted once meanwhile, then seen anew


async def test_prediction_prefetches_expected_functions_not_on_disk(short_tmp: Path) -> None:
    infos = images(short_tmp, 3)
    origin = DirectoryOrigin(short_tmp / "built")
    counts = {"hot": 0, "cold": 0, "gone": 0}
    sources = {name: (info.digest, origin) for name, info in zip(counts, infos, strict=True)}
    hot, cold, gone = (info.digest for info in infos)
    async with running(
        short_tmp,
        PrefetchTuning(predict_window_s=600, tick_s=0.05),
        resolve=sources.get,
        invocation_counts=lambda: dict(counts),
    ) as (store, prefetcher, _):
        await store.ensure(hot, origin)  # "hot" is on disk already
        counts["hot"] += 1
        counts["gone"] += 1
        # The loop samples the counters on its own: "gone" was invoked and is not on disk.
        with trio.fail_after(10):
            while not prefetcher.counters["predicted"]:
                await trio.sleep(0.01)
        assert await prefetcher.wait(gone, 10) is None
        assert not store.contains(cold)  # never invoked: not predicted
        assert prefetcher.counters["predicted"] == 1
        # Evicted again (budget pressure): not refetched at every tick...
        store._evict(store._disk[gone])
        assert prefetcher.predict_once() == []
        # ...but once the retry interval has passed.
        prefetcher._predicted_at[gone] -= prefetcher.predict_retry_s
        assert prefetcher.predict_once() == [gone]
        assert await prefetcher.wait(gone, 10) is None
        # A function quiet for longer than the window is not expected any more.
        store._evict(store._disk[gone])
        prefetcher._predicted_at.clear()
        quiet = InvocationHistory()
        quiet.observe(dict(counts), trio.current_time() - 10_000)
        prefetcher.history = quiet
        assert prefetcher.predict_once() == []
