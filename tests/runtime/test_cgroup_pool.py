"""CgroupPool with real cgroups: a burst of starts that finds the free list empty
gets its groups made in worker threads, in batches (never a mkdir per start on
the event loop), and groups beyond the pool's keep are removed off the loop too."""

from __future__ import annotations

import os
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from huselet.runtime.cgrouppool import CgroupPool
from huselet.runtime.cgroups import Cgroup, CgroupHost

MiB = 1 << 20


@pytest.fixture
async def pool(short_tmp: Path) -> AsyncIterator[CgroupPool]:
    host = CgroupHost.detect()
    if os.geteuid() != 0 or host is None or host.missing():
        pytest.skip("needs root and the memory, pids and cpu cgroup controllers")
    made = CgroupPool(
        host, f"huselet-test-{short_tmp.name}/fork", target_free=2, pids_max=64, cpu_cores=1.0
    )
    await made.setup()
    try:
        yield made
    finally:
        await made.close()


class CreationLog:
    """Which threads made groups (Cgroup.create wrapped, still the real mkdir)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.threads: list[threading.Thread] = []
        create = Cgroup.create

        def logged(group: Cgroup) -> bool:
            self.threads.append(threading.current_thread())
            return create(group)

        monkeypatch.setattr(Cgroup, "create", logged)


async def test_a_burst_gets_its_groups_made_off_the_event_loop_in_batches(
    pool: CgroupPool, monkeypatch: pytest.MonkeyPatch
) -> None:
    made = CreationLog(monkeypatch)
    groups: list[Cgroup] = []

    async def start() -> None:
        groups.append(await pool.acquire(32 * MiB))

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            for _ in range(40):
                nursery.start_soon(start)
    assert len({g.rel for g in groups}) == 40
    for group in groups:
        assert all(d.is_dir() for d in group.dirs.values())
        assert (group._mem_dir / "memory.limit_in_bytes").exists() or group.host.version == 2
        assert group.memory_bytes == 32 * MiB
    # 38 made for the burst (2 were pre-made), none on the event loop's thread.
    assert len(made.threads) == 38
    assert threading.main_thread() not in made.threads


async def test_groups_beyond_the_keep_are_removed(pool: CgroupPool) -> None:
    with trio.fail_after(60):
        groups = [await pool.acquire(32 * MiB) for _ in range(12)]  # keep is 4 x 2 = 8
        for group in groups:
            await pool.release(group)
    assert pool.free_count == 8
    gone = [g for g in groups if not any(d.exists() for d in g.dirs.values())]
    assert len(gone) == 4


async def test_a_group_keeps_its_owner_and_never_goes_to_another_uid(pool: CgroupPool) -> None:
    # A zygote of uid A may keep a handle on a group it placed itself in: that
    # group must never become uid B's.
    a, b = 190_321, 190_322
    with trio.fail_after(30):
        first = await pool.acquire(32 * MiB, owner=a)
        for d in first.dirs.values():
            assert (d / "cgroup.procs").stat().st_uid == a
        await pool.release(first)
        other = await pool.acquire(32 * MiB, owner=b)
        assert other is not first and other.owner == b
        again = await pool.acquire(32 * MiB, owner=a)
        assert again is first
        unowned = await pool.acquire(32 * MiB)
        assert unowned not in (first, other) and unowned.owner is None
        for d in unowned.dirs.values():
            assert (d / "cgroup.procs").stat().st_uid == 0


async def test_reserve_makes_the_groups_a_known_burst_will_take(
    pool: CgroupPool, monkeypatch: pytest.MonkeyPatch
) -> None:
    made = CreationLog(monkeypatch)
    uid = 190_323
    with trio.fail_after(60):
        await pool.reserve(70)
        assert pool.free_count >= 70
        await pool.reserve(5, owner=uid)  # chowned in the thread too
        free = pool.free_count
        groups = [await pool.acquire(32 * MiB, owner=uid) for _ in range(5)]
    assert pool.free_count == free  # none taken from the unowned ones
    for group in groups:
        assert group.owner == uid
        assert all((d / "cgroup.procs").stat().st_uid == uid for d in group.dirs.values())
    assert made.threads and threading.main_thread() not in made.threads


async def test_emptying_a_group_spares_a_process_that_leaves_by_itself(
    pool: CgroupPool,
) -> None:
    # A self-placing zygote is in an instance's group for a moment: releasing
    # the group waits for it to leave and never kills it.
    with trio.fail_after(30):
        group = await pool.acquire(32 * MiB)
        spared = await trio.lowlevel.open_process(["sleep", "30"])
        victim = await trio.lowlevel.open_process(["sleep", "30"])
        try:
            group.join(spared.pid)
            group.join(victim.pid)

            home = pool.named("z-home", memory_bytes=64 * MiB, pids_max=None)

            async def leave_later() -> None:
                await trio.sleep(0.2)  # not synchronisation: how long it stays
                home.join(spared.pid)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(leave_later)
                await pool.release(group, spare=[spared.pid])
            await victim.wait()
            assert victim.returncode == -9
            assert spared.poll() is None and not group.pids()
        finally:
            spared.kill()
            victim.kill()
            await spared.wait()
            await victim.wait()


def cpu_setting(group: Cgroup) -> tuple[str, ...]:
    d = group.path_for("cpu")
    assert d is not None
    if group.host.version == 2:
        return tuple((d / "cpu.max").read_text().split())
    return tuple((d / f"cpu.cfs_{k}_us").read_text().strip() for k in ("quota", "period"))


async def test_new_groups_get_the_cpu_quota_per_100_ms(pool: CgroupPool) -> None:
    # A fresh v1 group is written its quota only (its period is the kernel's
    # 100 ms already): the limit must still read one core per 100 ms.
    with trio.fail_after(30):
        group = await pool.acquire(32 * MiB)
    assert cpu_setting(group) == ("100000", "100000")


async def test_a_group_that_already_existed_gets_its_period_written_too(
    pool: CgroupPool,
) -> None:
    # Left over with another period (not made now): quota alone would mean
    # another limit than the one configured.
    group = Cgroup(pool.host, f"{pool.subtree}/leftover")
    assert group.create()
    try:
        if pool.host.version == 1:
            d = group.path_for("cpu")
            assert d is not None
            (d / "cpu.cfs_period_us").write_text("50000")
        assert not group.create()  # it exists: not fresh
        group.set_cpu(0.5, fresh=False)
        assert cpu_setting(group) == ("50000", "100000")
    finally:
        group.remove()


async def test_reserved_groups_carry_the_memory_limit_their_starts_ask_for(
    pool: CgroupPool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Written in the reserve's thread: a start taking one writes no limit on the loop.
    from huselet.runtime import cgroups

    writes: list[tuple[str, threading.Thread]] = []
    write = cgroups.write_control

    def logged(path: Path, value: str) -> None:
        writes.append((path.name, threading.current_thread()))
        write(path, value)

    monkeypatch.setattr(cgroups, "write_control", logged)
    uid = 190_324
    with trio.fail_after(60):
        await pool.reserve(3, owner=uid, memory_bytes=48 * MiB)
        groups = [await pool.acquire(48 * MiB, owner=uid) for _ in range(3)]
        other = await pool.acquire(40 * MiB)  # another limit: written at acquire
    limit_files = ("memory.max", "memory.limit_in_bytes")
    on_loop = [n for n, t in writes if t is threading.main_thread() and n in limit_files]
    assert on_loop and len(on_loop) <= 2  # `other`'s limit only (memsw too on v1)
    for group in [*groups, other]:
        name = "memory.max" if group.host.version == 2 else "memory.limit_in_bytes"
        want = 40 * MiB if group is other else 48 * MiB
        assert int((group._mem_dir / name).read_text()) == want
