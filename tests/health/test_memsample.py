"""RollingMemorySampler: a bounded number of /proc reads per tick, an exact total
once every instance has been measured, new and ended instances counted at once,
and no walk over the live pids per tick (it is told of starts and ends)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from huselet.dispatch.livepids import LivePids
from huselet.health.memsample import RollingMemorySampler
from huselet.health.pressure import measure_memory


class FakeProc:
    def __init__(self, sizes: dict[int, int]) -> None:
        self.sizes = sizes
        self.reads: list[int] = []

    def read(self, pid: int) -> int | None:
        self.reads.append(pid)
        return self.sizes.get(pid)


def follow(sampler: RollingMemorySampler, pids: list[int]) -> LivePids:
    live = LivePids()
    live.subscribe(sampler)
    for pid in pids:
        live.add(pid, pid)
    return live


def test_reads_at_most_per_call_and_converges_to_the_exact_total() -> None:
    proc = FakeProc({pid: pid * 1000 for pid in range(1, 101)})
    sampler = RollingMemorySampler(
        10, refresh_per_call=10, refresh_every=1, read=proc.read, available=lambda: 7
    )
    follow(sampler, list(proc.sizes))
    first = sampler.measure_now()
    assert len(proc.reads) == 10
    # 10 measured (pids 1..10, mean 5500), 90 counted at their mean.
    assert first.instances == 10 and first.used_bytes == 55_000 + 90 * 5500
    assert first.available_bytes == 7
    for _ in range(9):
        sample = sampler.measure_now()
    assert len(proc.reads) == 100 and sample.used_bytes == sum(proc.sizes.values())
    # A grown instance shows once its turn comes round again (oldest first).
    proc.sizes[1] = 10**9
    assert sampler.measure_now().used_bytes == sum(proc.sizes.values())
    assert proc.reads[-10:] == list(range(1, 11))


def test_new_instances_are_measured_first_and_ended_ones_leave_at_once() -> None:
    proc = FakeProc({1: 100, 2: 200, 3: 300})
    sampler = RollingMemorySampler(1, read=proc.read, available=lambda: 0)
    live = follow(sampler, [1, 2, 3])
    for _ in range(3):
        sampler.measure_now()
    assert sampler.measure_now().used_bytes == 600
    proc.sizes[4] = 4000
    live.add(4, 4)
    proc.reads.clear()
    assert sampler.measure_now().used_bytes == 4600 and proc.reads == [4]
    live.discard(1, 1)
    live.discard(3, 3)
    assert sampler.measure_now().used_bytes == 4200  # 1 and 3 ended: no read needed


def test_an_instance_ending_while_it_is_read_is_not_counted() -> None:
    proc = FakeProc({1: 100, 2: 200})
    sampler = RollingMemorySampler(2, read=proc.read, available=lambda: 0)
    live = follow(sampler, [1, 2])
    due = sampler.due()
    sizes, available = sampler.read(due)
    live.discard(1, 1)  # its teardown ran while the worker thread read /proc
    assert sampler.record(due, sizes, available).used_bytes == 200


def test_a_reused_pid_is_measured_afresh() -> None:
    proc = FakeProc({7: 100})
    sampler = RollingMemorySampler(4, read=proc.read, available=lambda: 0)
    live = LivePids()
    live.subscribe(sampler)
    old, new = object(), object()
    live.add(7, old)
    assert sampler.measure_now().used_bytes == 100
    # The process was reaped and its pid reused before the old owner's teardown.
    proc.sizes[7] = 5000
    live.add(7, new)
    live.discard(7, old)  # the old owner's late discard leaves the new one alone
    assert 7 in live
    assert sampler.measure_now().used_bytes == 5000


def test_per_tick_work_does_not_grow_with_the_instances() -> None:
    """Idle ticks cost per_call reads and nothing that walks every pid (issue 12)."""
    proc = FakeProc({pid: 1000 for pid in range(1, 5001)})
    sampler = RollingMemorySampler(
        16, refresh_per_call=16, refresh_every=1, read=proc.read, available=lambda: 0
    )
    live = follow(sampler, list(proc.sizes))

    class Counting(set[int]):
        iterated = 0

        def __iter__(self):  # type: ignore[no-untyped-def]
            Counting.iterated += 1
            return super().__iter__()

    sampler._live = Counting(sampler._live)
    for _ in range(400):
        sampler.measure_now()
    assert len(proc.reads) == 400 * 16
    assert Counting.iterated == 0
    assert len(live) == 5000


def test_idle_ticks_refresh_only_a_few_while_new_instances_get_the_full_slice() -> None:
    proc = FakeProc({pid: 1000 for pid in range(1, 101)})
    sampler = RollingMemorySampler(
        16, refresh_per_call=4, refresh_every=1, read=proc.read, available=lambda: 0
    )
    live = follow(sampler, list(proc.sizes))
    for _ in range(7):  # 100 new ones, 16 a tick
        sampler.measure_now()
    assert proc.reads[:100] == list(range(1, 101))
    assert proc.reads[100:] == [1, 2, 3, 4]  # the 7th tick had room for 4 refreshes
    proc.reads.clear()
    sampler.measure_now()
    assert proc.reads == [5, 6, 7, 8]  # nothing new: the four measured longest ago
    for pid in range(101, 121):
        proc.sizes[pid] = 1000
        live.add(pid, pid)
    proc.reads.clear()
    sampler.measure_now()
    assert proc.reads == list(range(101, 117))  # new ones take the whole slice
    assert sampler.measure_now().used_bytes == 120 * 1000


def test_idle_ticks_refresh_in_one_trip_every_few_ticks_at_the_same_rate() -> None:
    """Nothing new: nine ticks of ten read no instance (no worker-thread trip, two
    event-loop wake-ups fewer each), the tenth reads the ten ticks' refreshes at once;
    a tick that reads new instances takes the refreshes owed so far along."""
    proc = FakeProc({pid: 1000 for pid in range(1, 101)})
    sampler = RollingMemorySampler(64, refresh_per_call=4, read=proc.read, available=lambda: 0)
    live = follow(sampler, list(proc.sizes))
    sampler.measure_now()
    sampler.measure_now()  # 100 new ones, 64 a tick; the second had room for 4 refreshes
    proc.reads.clear()
    for _ in range(9):
        assert sampler.due() == []
    assert sampler.measure_now().used_bytes == 100 * 1000
    assert proc.reads == list(range(5, 45))  # 4 a tick for 10 ticks, oldest first
    proc.reads.clear()
    for _ in range(2):
        assert sampler.due() == []
    proc.sizes[101] = 1000
    live.add(101, 101)
    sampler.measure_now()
    assert proc.reads == [101, *range(45, 57)]  # the new one, and 3 ticks' refreshes


@settings(max_examples=200, deadline=None)
@given(
    steps=st.lists(
        st.dictionaries(st.integers(1, 40), st.integers(0, 10**6), max_size=30), max_size=12
    ),
    per_call=st.integers(1, 8),
)
def test_after_enough_calls_the_total_is_exact(steps: list[dict[int, int]], per_call: int) -> None:
    proc = FakeProc({})
    sampler = RollingMemorySampler(
        per_call, refresh_per_call=per_call, refresh_every=1, read=proc.read, available=lambda: 0
    )
    live = LivePids()
    live.subscribe(sampler)
    for sizes in steps:
        for pid in [p for p in live if p not in sizes]:
            live.discard(pid, pid)
        for pid in sizes:
            live.add(pid, pid)
        proc.sizes = sizes
        reads = len(proc.reads)
        sampler.measure_now()
        assert len(proc.reads) - reads <= per_call
    if steps:
        sizes = steps[-1]
        for _ in range(len(sizes) // per_call + 1):
            sample = sampler.measure_now()
        assert sample.used_bytes == sum(sizes.values())
        assert sample.instances == len(sizes)


async def test_real_processes_match_a_full_scan() -> None:
    children = [
        subprocess.Popen(
            [sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE
        )
        for _ in range(3)
    ]
    try:
        pids = [os.getpid(), *(c.pid for c in children)]
        sampler = RollingMemorySampler(2, budget_s=None)  # 2 a trip even on a loaded host
        follow(sampler, pids)
        await sampler.sample()
        rolled = await sampler.sample()  # the reads run in a worker thread
        full = measure_memory(pids)
        assert rolled.instances == full.instances == 4
        # Sizes move a little between the reads; the totals agree closely.
        assert rolled.used_bytes == pytest.approx(full.used_bytes, rel=0.2)
    finally:
        for c in children:
            c.kill()
            c.wait()


class SlowProc(FakeProc):
    """Each read advances a clock by ``cost_s``: the budget is checked against it."""

    def __init__(self, sizes: dict[int, int], cost_s: float) -> None:
        super().__init__(sizes)
        self.now = 0.0
        self.cost_s = cost_s

    def read(self, pid: int) -> int | None:
        self.now += self.cost_s
        return super().read(pid)

    def clock(self) -> float:
        return self.now


def test_new_instances_are_read_in_batches_bounded_by_the_time_budget() -> None:
    """2,000 new instances at 0.5 ms a read: 50 a 25 ms trip, all in 40 trips (not 125
    ticks of 16), and the ones a trip did not reach keep their place in line."""
    cost = 2**-11  # ~0.5 ms, exact in binary: the budget holds exactly 50 reads
    proc = SlowProc({pid: 1000 for pid in range(1, 2001)}, cost_s=cost)
    sampler = RollingMemorySampler(
        1024, refresh_per_call=4, budget_s=50 * cost, read=proc.read, available=lambda: 0
    )
    sampler._clock = proc.clock
    follow(sampler, list(proc.sizes))
    first = sampler.measure_now()
    assert len(proc.reads) == 50 and proc.reads == list(range(1, 51))
    assert first.pending == 1950 and first.instances == 50
    second = sampler.measure_now()
    assert proc.reads[50:] == list(range(51, 101)) and second.pending == 1900
    trips = 2
    while True:
        trips += 1
        if not sampler.measure_now().pending:
            break
    assert trips == 40
    assert len(proc.reads) == 2000 and len(set(proc.reads)) == 2000  # each read once
    assert sampler.measure_now().used_bytes == 2000 * 1000


def test_a_trip_reads_at_least_one_pid_whatever_the_budget() -> None:
    proc = SlowProc({1: 10, 2: 20}, cost_s=5.0)  # every read blows the budget
    sampler = RollingMemorySampler(budget_s=0.001, read=proc.read, available=lambda: 0)
    sampler._clock = proc.clock
    follow(sampler, [1, 2])
    assert sampler.measure_now().pending == 1
    assert sampler.measure_now().used_bytes == 30


def test_unreadable_pids_are_retried_but_not_pending() -> None:
    """``pending`` makes the memory loop tick every 100 ms: one process whose
    size cannot be read must not keep it there."""
    proc = FakeProc({1: 100})  # 2 is live but unreadable
    sampler = RollingMemorySampler(read=proc.read, available=lambda: 0)
    follow(sampler, [1, 2])
    sample = sampler.measure_now()
    assert sample.instances == 1 and sample.pending == 0
    proc.sizes[2] = 300  # readable again: measured on a later tick
    for _ in range(3):
        sample = sampler.measure_now()
    assert sample.used_bytes == 400 and sample.pending == 0


async def test_a_tick_with_nothing_to_read_makes_no_thread_trip() -> None:
    import threading

    readers: list[int] = []

    def available() -> int:
        readers.append(threading.get_ident())
        return 1

    sampler = RollingMemorySampler(read=lambda pid: 4096, available=available)
    await sampler.sample()  # no instance: MemAvailable on this thread
    assert readers == [threading.get_ident()]
    follow(sampler, [os.getpid()])
    await sampler.sample()  # something to read: a worker thread
    assert readers[1] != threading.get_ident()
