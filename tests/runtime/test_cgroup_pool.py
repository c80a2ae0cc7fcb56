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

from huselet.runtime.cgroups import Cgroup, CgroupHost, CgroupPool

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

        def logged(group: Cgroup) -> None:
            self.threads.append(threading.current_thread())
            create(group)

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
