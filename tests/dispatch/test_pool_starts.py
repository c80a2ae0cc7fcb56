"""FunctionPool start pacing: at most MAX_STARTING starts under way per function;
the rest follow as those finish, so a big min_instances (or burst) never queues
thousands of starts whose timeouts run while they wait their turn."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import trio
from support import fork_stack, unconfined_stack

from huselet.dispatch.instance import InstanceState
from huselet.dispatch.pool import MAX_STARTING

NOOP = "def handler(event, context):\n    return {}\n"


async def test_min_instances_beyond_the_cap_start_in_waves(short_tmp: Path) -> None:
    count = MAX_STARTING * 2 + 8
    spec = {"min_instances": count, "max_instances": count, "start_timeout_ms": 60000}
    async with unconfined_stack(short_tmp, "many", NOOP, **spec) as node:
        pool = node.pool("many")
        most_starting = 0
        with trio.fail_after(300):
            while True:
                most_starting = max(most_starting, pool.starting)
                idle = [r for r in pool.instances.values() if r.state is InstanceState.IDLE]
                if len(idle) == count:
                    break
                await trio.lowlevel.checkpoint()
        assert most_starting == MAX_STARTING
        assert pool.counters["instances_started"] == count
        assert pool.counters["start_failures"] == 0


class SpawnNames(trio.abc.Instrument):
    def __init__(self) -> None:
        self.names: list[str] = []

    def task_spawned(self, task: trio.lowlevel.Task) -> None:
        self.names.append(task.name)


async def test_a_start_runs_its_links_handshake_in_its_own_task(short_tmp: Path) -> None:
    # The fork runtime dials the daemon's own link socket for each instance (a
    # socket pair, locallinks): HELLO, token and WELCOME run in the instance's
    # task, no task is spawned for them.
    count = 4
    spawned = SpawnNames()
    async with fork_stack(short_tmp, "hs", NOOP) as node:
        pool = node.pool("hs")
        trio.lowlevel.add_instrument(spawned)
        try:
            pool.settings = replace(pool.settings, min_instances=count, max_instances=count)
            pool.ensure_capacity()
            with trio.fail_after(120):
                while pool.state_counts[InstanceState.IDLE] < count:
                    await trio.sleep(0.01)
        finally:
            trio.lowlevel.remove_instrument(spawned)
        assert node.links.refused == 0
    assert sum(name.startswith("instance ") for name in spawned.names) == count
    assert not [name for name in spawned.names if "_handshake" in name]
