"""Heartbeats cost one task per pool, not a task (and timers) per instance.

Real workers: idle instances are pinged and answer; the count of tasks that
judge them does not grow with the instances, and the task ends with them.
"""

from __future__ import annotations

from pathlib import Path

import trio
from support import running_stack, write_package

from huselet.dispatch.instance import InstanceState

NOOP = "def handler(event, context):\n    return {}\n"


def tasks_named(fragment: str) -> int:
    """Tasks alive in this trio run whose name contains ``fragment``."""
    found, todo = 0, [trio.lowlevel.current_root_task()]
    while todo:
        task = todo.pop()
        if fragment in task.name:
            found += 1
        for nursery in task.child_nurseries:
            todo.extend(nursery.child_tasks)
    return found


async def test_idle_instances_are_pinged_by_one_task_per_pool(short_tmp: Path) -> None:
    write_package(short_tmp, "idle", NOOP)
    spec = {"name": "idle", "package": "pkgs/idle", "handler": "main:handler", "min_instances": 4}
    health = {"heartbeat_interval_ms": 100, "heartbeat_timeout_ms": 500}
    async with running_stack(short_tmp, [spec], extra={"health": health}) as node:
        pool = node.pool("idle")
        with trio.fail_after(60):
            while sum(r.state is InstanceState.IDLE for r in pool.instances.values()) < 4:
                await trio.sleep(0.02)
            # Every instance is pinged and answers (last_heard moves past its start) ...
            ready = {r.id: r.last_heard for r in pool.instances.values()}
            while any(r.last_heard <= ready[r.id] for r in pool.instances.values()):
                await trio.sleep(0.02)
        assert pool.counters["heartbeat_missed"] == 0
        # ... judged by a single task holding one entry per instance.
        assert tasks_named("Heartbeats.run") == 1
        assert len(pool.heartbeats) == 4
        assert tasks_named("_heartbeat") == 0
        # With no instance left, the task ends (idle pools cost nothing).
        node.replace_function("idle", min_instances=0)
        pool.reap_idle()
        with trio.fail_after(60):
            while pool.instances or tasks_named("Heartbeats.run"):
                await trio.sleep(0.05)
        assert len(pool.heartbeats) == 0
