"""Resource-pressure loops: the hysteresis decisions with plain numbers, the memory
and disk loops driven by scripted measurements against fakes (pressurekit.py), and
the real parts — an ImageStore refusing installs under disk pressure, the /proc
measurements. The descriptor loop: test_fdpressure.py."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TypeVar

import pytest
import trio
import trio.testing
from cache_testkit import build_image, variant
from pressurekit import FakeDispatcher, FakeIngress, Script, ScriptedMemory

from cache.origin import DirectoryOrigin
from cache.store import ImageStore, LowDiskSpace
from huselet.config.health import HealthSettings
from huselet.health.counters import HealthCounter
from huselet.health.fdpressure import FdPressure
from huselet.health.memsample import RollingMemorySampler
from huselet.health.pressure import (
    Change,
    DiskPressure,
    DiskSample,
    Hysteresis,
    MemoryPressure,
    MemorySample,
    build_pressure_loops,
    host_memory,
    measure_disk,
    measure_memory,
    process_memory_bytes,
)
from huselet.health.supervisor import HealthState, HealthSupervisor, LoopReport

MiB = 1 << 20
T = TypeVar("T")
GUARD_S = 10  # hang guard, not a timing assertion


# --- Hysteresis ------------------------------------------------------------------------------


def transitions(gate: Hysteresis, values: Sequence[float]) -> list[Change | None]:
    return [gate.update(v) for v in values]


def test_high_is_bad_enters_at_the_threshold_and_leaves_only_past_the_other() -> None:
    gate = Hysteresis(95, 85)
    assert transitions(gate, [50, 94.9]) == [None, None]
    assert gate.update(95) is Change.ENTER and gate.active
    # Inside the band, and exactly at leave: still active.
    assert transitions(gate, [90, 85, 99, 85]) == [None] * 4
    assert gate.update(84.9) is Change.LEAVE and not gate.active
    assert gate.update(94) is None


def test_low_is_bad_for_free_space() -> None:
    gate = Hysteresis(5, 10)
    assert not gate.high_is_bad
    assert transitions(gate, [50, 5.1, 5]) == [None, None, Change.ENTER]
    assert transitions(gate, [3, 9.9, 10]) == [None, None, None]
    assert gate.update(10.1) is Change.LEAVE
    assert transitions(gate, [6, 9]) == [None, None]


def test_a_sawtooth_at_either_threshold_does_not_flap() -> None:
    gate = Hysteresis(95, 85)
    # Hovering around the enter threshold: one entry, no exit.
    saw = [94.5, 95.5] * 50
    assert [c for c in transitions(gate, saw) if c] == [Change.ENTER]
    # Hovering around the leave threshold: one exit, no re-entry.
    saw = [85.5, 84.5] * 50
    assert [c for c in transitions(gate, saw) if c] == [Change.LEAVE]
    # A sawtooth spanning the whole band does switch each time: that is real change.
    assert [c for c in transitions(gate, [96, 80, 96, 80]) if c] == [
        Change.ENTER,
        Change.LEAVE,
        Change.ENTER,
        Change.LEAVE,
    ]


def test_thresholds_must_differ() -> None:
    with pytest.raises(ValueError):
        Hysteresis(90, 90)


# --- MemoryPressure


def memory_loop(
    dispatcher: FakeDispatcher, used_mb: list[float], *, available_mb: float = 4096, min_mb: int = 0
) -> MemoryPressure:
    script = Script([MemorySample(int(u * MiB), 2, int(available_mb * MiB)) for u in used_mb])
    return MemoryPressure(
        dispatcher,
        interval_s=1,
        budget_bytes=100 * MiB,
        enter_percent=95,
        leave_percent=85,
        min_available_bytes=min_mb * MiB,
        source=ScriptedMemory(script.next),
    )


async def test_memory_pressure_holds_starts_reaps_idle_and_recovers() -> None:
    dispatcher = FakeDispatcher(idle=3)
    # under, over (enter), still severe, in the band, just at leave, past leave.
    loop = memory_loop(dispatcher, [50, 96, 97, 90, 85, 84])
    report = LoopReport("memory")

    await loop.check(report)
    assert report.state is HealthState.OK and dispatcher.holds == [] and dispatcher.reaps == []
    assert "50 MiB of the node's 100 MiB budget" in report.detail

    await loop.check(report)  # 96 %: enter
    assert report.state is HealthState.DEGRADED
    assert "96 MiB of the node's 100 MiB budget (96.0%)" in report.detail
    assert len(dispatcher.holds) == 1 and "memory pressure" in (dispatcher.holds[0] or "")
    assert len(dispatcher.reaps) == 1 and report.counters["instances_reaped"] == 3
    assert report.counters["entered"] == 1
    assert report.last_action == "reaped idle instances"

    dispatcher.idle = 1  # an instance finished its request meanwhile
    await loop.check(report)  # 97 %: still at the enter side → reap what became idle
    assert len(dispatcher.reaps) == 2 and report.counters["instances_reaped"] == 4
    await loop.check(report)  # 90 %: in the band, no more reaping, still held
    await loop.check(report)  # 85 %: not past leave yet
    assert len(dispatcher.reaps) == 2
    assert dispatcher.holds[1:] == [] and report.state is HealthState.DEGRADED

    await loop.check(report)  # 84 %: leave
    assert dispatcher.holds[-1] is None and report.counters["left"] == 1
    assert report.state is HealthState.OK
    assert report.last_action == "starting instances again"


async def test_memory_band_does_not_reap() -> None:
    dispatcher = FakeDispatcher()
    loop = memory_loop(dispatcher, [96, 90, 88, 94.9])
    report = LoopReport("memory")
    for _ in range(4):
        await loop.check(report)
    assert len(dispatcher.reaps) == 1  # only at entry
    assert report.counters["entered"] == 1 and report.counters["left"] == 0


async def test_memory_sawtooth_near_the_budget_does_not_flap() -> None:
    dispatcher = FakeDispatcher()
    loop = memory_loop(dispatcher, [94.9, 95.1] * 20 + [84.9, 85.1] * 20)
    report = LoopReport("memory")
    for _ in range(80):
        await loop.check(report)
    assert report.counters["entered"] == 1 and report.counters["left"] == 1
    assert [h is None for h in dispatcher.holds] == [False, True]


async def test_low_host_memory_is_pressure_too() -> None:
    dispatcher = FakeDispatcher()
    loop = memory_loop(dispatcher, [10], available_mb=100, min_mb=256)
    report = LoopReport("memory")
    await loop.check(report)
    assert report.state is HealthState.DEGRADED
    assert "the host has 100 MiB available (minimum 256 MiB)" in report.detail
    assert "the host has 100 MiB available" in (dispatcher.holds[0] or "")
    # Leaves only once MemAvailable is 1.25 times the minimum again.
    assert isinstance(loop.source, ScriptedMemory)
    loop.source.measure = lambda: MemorySample(10 * MiB, 1, 300 * MiB)
    await loop.check(report)
    assert report.state is HealthState.DEGRADED
    loop.source.measure = lambda: MemorySample(10 * MiB, 1, 330 * MiB)
    await loop.check(report)
    assert report.state is HealthState.OK and dispatcher.holds[-1] is None


# --- DiskPressure with a real ImageStore


async def test_disk_pressure_refuses_installs_evicts_unused_and_recovers(tmp_path: Path) -> None:
    images = [build_image(tmp_path, tag, variant(tag)) for tag in ("a", "b", "c")]
    origin = DirectoryOrigin(images[0].path.parent)
    store = ImageStore(tmp_path / "state", disk_budget_bytes=64 * MiB, memory_budget_bytes=64 * MiB)
    free = [50.0]
    loop = DiskPressure(
        tmp_path / "state",
        store,
        interval_s=1,
        enter_free_percent=5,
        leave_free_percent=10,
        measure=lambda path: DiskSample(int(free[0] * MiB), 100 * MiB),
    )
    report = LoopReport("disk")
    with trio.fail_after(GUARD_S):
        async with trio.open_nursery() as nursery:
            await nursery.start(store.run)
            in_use = await store.get(images[0].digest, origin)  # an instance holds it
            await store.ensure(images[1].digest, origin)  # installed, held by nobody
            await loop.check(report)
            assert report.state is HealthState.OK

            free[0] = 3.0
            await loop.check(report)
            assert report.state is HealthState.DEGRADED
            assert f"state dir {tmp_path / 'state'} has 3.0% free (needs 10%)" in report.detail
            assert report.counters["entered"] == 1 and report.counters["images_evicted"] == 1
            assert store.contains(images[0].digest) and not store.contains(images[1].digest)
            evicted_file = tmp_path / "state" / "images" / images[1].path.name
            assert not evicted_file.exists()
            # A new image is refused, with the figure, before anything is downloaded.
            with pytest.raises(LowDiskSpace) as refused:
                await store.get(images[2].digest, origin)
            assert str(refused.value) == (
                f"refusing to install image {images[2].digest}: "
                f"state dir {tmp_path / 'state'} has 3.0% free (needs 10%)"
            )
            assert not list((tmp_path / "state" / "images").glob("*.part"))
            # What is installed keeps serving.
            again = await store.get(images[0].digest, origin)
            again.release()

            free[0] = 8.0  # better, but not past the leave threshold
            await loop.check(report)
            assert report.state is HealthState.DEGRADED
            with pytest.raises(LowDiskSpace, match=r"has 8\.0% free \(needs 10%\)"):
                await store.ensure(images[1].digest, origin)

            free[0] = 12.0
            await loop.check(report)
            assert report.state is HealthState.OK and report.counters["left"] == 1
            # Accepted at once: the refusal left no fetch cool-down behind.
            lease = await store.get(images[2].digest, origin)
            lease.release()
            in_use.release()
            nursery.cancel_scope.cancel()


async def test_disk_loop_through_the_supervisor_on_a_real_file_system(tmp_path: Path) -> None:
    class Cache:
        refused: str | None = None

        def refuse_installs(self, reason: str | None) -> None:
            self.refused = reason

        def evict_unused(self) -> list[str]:
            return []

    real = measure_disk(tmp_path)
    # Thresholds around the real figure: whatever the disk, this run is under pressure.
    enter = min(99, int(real.free_percent) + 1)
    loop = DiskPressure(
        tmp_path, Cache(), interval_s=0.01, enter_free_percent=enter, leave_free_percent=100
    )
    supervisor = HealthSupervisor([loop])
    with trio.fail_after(GUARD_S):
        async with trio.open_nursery() as nursery:
            await nursery.start(supervisor.run)
            while loop.last is None:
                await trio.sleep(0.01)
            nursery.cancel_scope.cancel()
    described = supervisor.describe()
    assert described["state"] == "degraded"
    (row,) = described["loops"]
    assert row["loop"] == "disk" and row["counters"]["entered"] == 1
    assert row["last_action"] == "evicted unused images"


async def test_disk_measure_error_is_reported_not_raised(tmp_path: Path) -> None:
    class Cache:
        def refuse_installs(self, reason: str | None) -> None:
            raise AssertionError("not reached")

        def evict_unused(self) -> list[str]:
            raise AssertionError("not reached")

    loop = DiskPressure(
        tmp_path / "missing", Cache(), interval_s=1, enter_free_percent=5, leave_free_percent=10
    )
    report = LoopReport("disk")
    await loop.check(report)
    assert report.state is HealthState.DEGRADED
    assert "cannot measure free space" in report.detail and report.counters["measure_errors"] == 1


# --- the real measurements


def test_measure_disk_is_sane(tmp_path: Path) -> None:
    sample = measure_disk(tmp_path)
    assert 0 < sample.free_bytes <= sample.total_bytes
    assert 0 < sample.free_percent <= 100


def test_process_memory_of_a_live_and_a_dead_process() -> None:
    own = process_memory_bytes(os.getpid())
    assert own is not None and own > 1 * MiB
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait(GUARD_S)
    assert process_memory_bytes(child.pid) is None
    sample = measure_memory([os.getpid(), child.pid])
    assert sample.instances == 1 and sample.used_bytes == pytest.approx(own, rel=0.5)
    assert sample.available_bytes > 0


# --- configuration


def test_build_pressure_loops_from_settings(tmp_path: Path) -> None:
    settings = HealthSettings(memory_budget_mb=512, disk_interval_ms=250)
    dispatcher = FakeDispatcher()
    loops = build_pressure_loops(
        settings,
        state_dir=tmp_path,
        dispatcher=dispatcher,
        cache=ImageStore(tmp_path, disk_budget_bytes=MiB, memory_budget_bytes=MiB),
        ingress=FakeIngress(),
    )
    assert [loop.name for loop in loops] == ["disk", "memory", "descriptors"]
    disk, memory, fds = loops
    assert isinstance(disk, DiskPressure) and disk.interval_s == 0.25
    assert (disk.gate.enter, disk.gate.leave) == (5, 10)
    assert isinstance(memory, MemoryPressure) and memory.budget_bytes == 512 * MiB
    assert memory.available_gate is not None and memory.available_gate.enter == 256 * MiB
    # Its sampler follows the dispatcher's live pids (told of starts and ends, no walk).
    assert isinstance(memory.source, RollingMemorySampler)
    assert dispatcher.pid_listeners == [memory.source]
    assert isinstance(fds, FdPressure) and (fds.gate.enter, fds.gate.leave) == (85, 70)
    # 0: 90 % of the host's RAM.
    (_, default_memory, _) = build_pressure_loops(
        HealthSettings(memory_min_available_mb=0),
        state_dir=tmp_path,
        dispatcher=FakeDispatcher(),
        cache=ImageStore(tmp_path, disk_budget_bytes=MiB, memory_budget_bytes=MiB),
        ingress=FakeIngress(),
    )
    assert isinstance(default_memory, MemoryPressure)
    assert default_memory.budget_bytes > 64 * MiB and default_memory.available_gate is None


async def test_memory_loop_measures_a_burst_of_new_instances_within_seconds(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """With new instances pending the loop ticks every 200 ms, not every interval:
    300 new ones at 10 a trip are all measured within 30 ticks (~6 s of Trio time)
    although the loop's interval is a minute; then it slows down again."""
    # 10 a trip by count, not by the time budget: the same number of trips on a
    # loaded host (the budget is covered in test_memsample.py).
    sampler = RollingMemorySampler(
        10, budget_s=None, read=lambda pid: 1 * MiB, available=lambda: 4096 * MiB
    )
    for pid in range(1, 301):
        sampler.added(pid)
    all_measured = trio.Event()

    class Watched:
        # Told by the source itself: a test task polling on a timer would let the
        # mock clock jump ahead while a worker thread reads.
        async def sample(self) -> MemorySample:
            sample = await sampler.sample()
            if not sample.pending:
                all_measured.set()
            return sample

    loop = MemoryPressure(
        FakeDispatcher(),
        interval_s=60,
        budget_bytes=1000 * MiB,
        enter_percent=95,
        leave_percent=85,
        source=Watched(),
    )
    report = LoopReport("memory")
    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(loop.run, report)
        await all_measured.wait()
        took = trio.current_time() - start
        samples = report.counters[HealthCounter.SAMPLES]
        await trio.sleep(300)  # nothing new: one tick a minute again
        assert report.counters[HealthCounter.SAMPLES] - samples <= 6
        nursery.cancel_scope.cancel()
    assert loop.last is not None and loop.last.instances == 300
    assert loop.last.used_bytes == 300 * MiB
    assert took < 10  # Trio (mock) time: at the 60 s interval it would take 30 minutes


def test_host_memory_reads_the_live_meminfo_through_one_kept_descriptor() -> None:
    fresh = {
        line.split(":")[0]: int(line.split()[1]) * 1024
        for line in Path("/proc/meminfo").read_text().splitlines()
        if line.startswith(("MemTotal:", "MemAvailable:"))
    }
    total, available = host_memory()
    assert total == fresh["MemTotal"]
    assert available == pytest.approx(fresh["MemAvailable"], rel=0.2)
    fds = len(os.listdir("/proc/self/fd"))
    for _ in range(50):
        assert host_memory()[0] == total  # pread at offset 0: the whole file each time
    assert len(os.listdir("/proc/self/fd")) == fds
