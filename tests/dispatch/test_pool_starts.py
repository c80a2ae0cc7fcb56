"""FunctionPool start pacing: at most MAX_STARTING starts under way per function;
the rest follow as those finish, so a big min_instances (or burst) never queues
thousands of starts whose timeouts run while they wait their turn."""

from __future__ import annotations

from pathlib import Path

import trio
from support import unconfined_stack

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
