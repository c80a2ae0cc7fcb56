"""RollingMemorySampler: a bounded number of /proc reads per tick, an exact total
once every instance has been measured, new and ended instances counted at once."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from huselet.health.memsample import RollingMemorySampler
from huselet.health.pressure import measure_memory


class FakeProc:
    def __init__(self, sizes: dict[int, int]) -> None:
        self.sizes = sizes
        self.reads: list[int] = []

    def read(self, pid: int) -> int | None:
        self.reads.append(pid)
        return self.sizes.get(pid)


def test_reads_at_most_per_call_and_converges_to_the_exact_total() -> None:
    proc = FakeProc({pid: pid * 1000 for pid in range(1, 101)})
    sampler = RollingMemorySampler(10, read=proc.read, available=lambda: 7)
    pids = list(proc.sizes)
    first = sampler(pids)
    assert len(proc.reads) == 10
    # 10 measured (pids 1..10, mean 5500), 90 counted at their mean.
    assert first.instances == 10 and first.used_bytes == 55_000 + 90 * 5500
    assert first.available_bytes == 7
    for _ in range(9):
        sample = sampler(pids)
    assert len(proc.reads) == 100 and sample.used_bytes == sum(proc.sizes.values())
    # A grown instance shows once its turn comes round again (oldest first).
    proc.sizes[1] = 10**9
    assert sampler(pids).used_bytes == sum(proc.sizes.values())
    assert proc.reads[-10:] == list(range(1, 11))


def test_new_instances_are_measured_first_and_ended_ones_leave_at_once() -> None:
    proc = FakeProc({1: 100, 2: 200, 3: 300})
    sampler = RollingMemorySampler(1, read=proc.read, available=lambda: 0)
    for _ in range(3):
        sampler([1, 2, 3])
    assert sampler([1, 2, 3]).used_bytes == 600
    proc.sizes[4] = 4000
    proc.reads.clear()
    assert sampler([1, 2, 3, 4]).used_bytes == 4600 and proc.reads == [4]
    assert sampler([2, 4]).used_bytes == 4200  # 1 and 3 ended: no read needed


@settings(max_examples=200, deadline=None)
@given(
    steps=st.lists(
        st.dictionaries(st.integers(1, 40), st.integers(0, 10**6), max_size=30), max_size=12
    ),
    per_call=st.integers(1, 8),
)
def test_after_enough_calls_the_total_is_exact(steps: list[dict[int, int]], per_call: int) -> None:
    proc = FakeProc({})
    sampler = RollingMemorySampler(per_call, read=proc.read, available=lambda: 0)
    for sizes in steps:
        proc.sizes = sizes
        reads = len(proc.reads)
        sampler(list(sizes))
        assert len(proc.reads) - reads <= per_call
    if steps:
        sizes = steps[-1]
        for _ in range(len(sizes) // per_call + 1):
            sample = sampler(list(sizes))
        assert sample.used_bytes == sum(sizes.values())


def test_real_processes_match_a_full_scan() -> None:
    children = [
        subprocess.Popen(
            [sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE
        )
        for _ in range(3)
    ]
    try:
        pids = [os.getpid(), *(c.pid for c in children)]
        sampler = RollingMemorySampler(2)
        sampler(pids)
        rolled = sampler(pids)
        full = measure_memory(pids)
        assert rolled.instances == full.instances == 4
        # Sizes move a little between the reads; the totals agree closely.
        assert rolled.used_bytes == pytest.approx(full.used_bytes, rel=0.2)
    finally:
        for c in children:
            c.kill()
            c.wait()
