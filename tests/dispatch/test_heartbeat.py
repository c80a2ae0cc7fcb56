"""Heartbeats cost one task per pool, not a task (and timers) per instance —
and idle instances the kernel watches cost no ping at all.

Real workers: idle instances are pinged and answer; the count of tasks that
judge them does not grow with the instances, and the task ends with them.
Direct children of the daemon (the ``process`` runtime here, ``fork``
alike) are not pinged when idle: a SIGSTOP arrives as SIGCHLD and an exit
through the pidfd, and both still replace the instance.
"""

from __future__ import annotations

import os
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
from support import GATE_WAIT, running_stack, write_package

from huselet.dispatch.childstops import child_stops
from huselet.dispatch.instance import InstanceState
from huselet.dispatch.reasons import StopReason
from huselet.errors import InstanceLost
from huselet.testing.conformance import require_tools
from huselet.testing.probes import require_sandbox_host, sandbox_settings

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
    # The slow idle period of kernel-watched instances, made short: pinged.
    health = {
        "heartbeat_interval_ms": 100,
        "heartbeat_timeout_ms": 500,
        "idle_heartbeat_interval_ms": 100,
    }
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


NO_IDLE_PINGS = {
    "heartbeat_interval_ms": 50,
    "heartbeat_timeout_ms": 2000,  # a loaded machine's idle worker always answers in time
    "idle_heartbeat_interval_ms": 0,  # idle children: the kernel alone watches them
}


@asynccontextmanager
async def idle_children(root: Path, count: int) -> AsyncIterator[tuple[Any, Any]]:
    """A stack whose ``count`` idle instances only the kernel watches: (node, pool)."""
    write_package(root, "idle", NOOP)
    spec = {"name": "idle", "package": "pkgs/idle", "handler": "main:handler"}
    health = {"health": NO_IDLE_PINGS}
    async with running_stack(root, [spec | {"min_instances": count}], extra=health) as node:
        yield node, node.pool("idle")


async def wait_idle(pool, count: int) -> list[int]:  # type: ignore[no-untyped-def]
    """Pids of ``count`` idle instances not asked to stop (a replaced one may linger)."""

    def idle() -> list[int]:
        return [
            r.handle.pid
            for r in pool.instances.values()
            if r.state is InstanceState.IDLE and r.stop_reason is None
        ]

    while len(idle()) < count:
        await trio.sleep(0.02)
    return idle()


async def test_idle_children_are_not_pinged_and_hold_no_timer(short_tmp: Path) -> None:
    async with idle_children(short_tmp, 3) as (node, pool):
        with trio.fail_after(60):
            await wait_idle(pool, 3)
            # Served, then idle again: still no entry (busy ones need none either).
            await node.dispatcher.invoke("idle", b"{}", "json")
            await wait_idle(pool, 3)
            # Forty ping intervals pass with nobody pinged, judged or woken.
            until = trio.current_time() + 40 * 0.05
            while trio.current_time() < until:
                await trio.sleep(0.05)
        assert pool.counters["heartbeat_kernel_watched"] == 3
        assert pool.counters["heartbeat_pings"] == 0
        assert len(pool.heartbeats) == 0
        assert tasks_named("Heartbeats.run") == 0
        assert all(pool.heartbeats.kernel_watched(r) for r in pool.instances.values())


async def test_a_stopped_idle_child_is_pinged_once_and_replaced(short_tmp: Path) -> None:
    async with idle_children(short_tmp, 2) as (_, pool):
        with trio.fail_after(60):
            first, other = await wait_idle(pool, 2)
            stopped = pool.instances[next(iter(pool.instances))]
            os.kill(first, signal.SIGSTOP)
            # Only the SIGCHLD it sent can get it noticed: no timer pings it.
            while pool.counters["heartbeat_missed"] == 0:
                await trio.sleep(0.02)
            pids = await wait_idle(pool, 2)
        assert stopped.stop_reason == "missed heartbeat"
        assert first not in pids and other in pids  # replaced; the other one untouched
        assert pool.counters["heartbeat_pings"] == 1  # the stopped one, once
        assert child_stops().stops_seen >= 1


async def test_a_killed_idle_child_is_replaced_without_pings(short_tmp: Path) -> None:
    async with idle_children(short_tmp, 1) as (_, pool):
        with trio.fail_after(60):
            (first,) = await wait_idle(pool, 1)
            record = next(iter(pool.instances.values()))
            os.kill(first, signal.SIGKILL)
            while True:
                pids = await wait_idle(pool, 1)
                if first not in pids:
                    break
                await trio.sleep(0.02)
        # Whichever the kernel reported first: the pidfd or the link's EOF.
        assert record.stop_reason in (StopReason.EXITED, StopReason.LINK_CLOSED)
        assert pool.counters["heartbeat_pings"] == 0


async def test_a_busy_child_stopped_by_sigstop_is_noticed_by_the_kernel(
    short_tmp: Path,
) -> None:
    # Held at a gate never opened (not asleep for a time a stalled test could
    # outlast): the call ends only when the stopped instance is found.
    held = GATE_WAIT + "def handler(event, context):\n    wait_at_gate('/tmp/never', 600)\n"
    write_package(short_tmp, "busy", held)
    spec = {
        "name": "busy",
        "package": "pkgs/busy",
        "handler": "main:handler",
        "timeout_ms": 600_000,
    }
    async with running_stack(short_tmp, [spec], extra={"health": NO_IDLE_PINGS}) as node:
        pool = node.pool("busy")

        async def stop_it_when_busy() -> None:
            while not any(r.inflight for r in pool.instances.values()):
                await trio.sleep(0.005)
            (record,) = pool.instances.values()
            assert record.handle is not None and record.handle.pid
            os.kill(record.handle.pid, signal.SIGSTOP)

        with trio.fail_after(120):  # far inside the request's 10-minute deadline
            async with trio.open_nursery() as nursery:
                nursery.start_soon(stop_it_when_busy)
                with pytest.raises(InstanceLost, match="frozen by SIGSTOP or a tracer"):
                    await node.dispatcher.invoke("busy", b"{}", "json")
        assert pool.counters["stopped_busy"] == 1
        assert len(pool.heartbeats) == 0  # no periodic check was what found it


async def test_a_bwrap_worker_is_not_the_daemons_child_so_it_is_pinged(short_tmp: Path) -> None:
    # bwrap's handle pid is bwrap itself (our child), the worker is bwrap's child:
    # a stop of the worker reaches nobody here, so the idle worker is pinged.
    require_sandbox_host()
    missing = require_tools("bwrap", "setpriv")
    if missing:
        pytest.skip(missing)
    write_package(short_tmp, "idle", NOOP)
    spec = {"name": "idle", "package": "pkgs/idle", "handler": "main:handler"}
    spec |= {"runtime": "bwrap", "min_instances": 1}
    runtimes = {"bwrap": sandbox_settings(short_tmp)}
    async with running_stack(short_tmp, [spec], runtimes, extra={"health": NO_IDLE_PINGS}) as node:
        pool = node.pool("idle")
        with trio.fail_after(60):
            (launcher,) = await wait_idle(pool, 1)
            record = next(iter(pool.instances.values()))
            worker = launcher  # bwrap -> its pid 1 (reaper) -> the worker: the leaf
            while children := Path(f"/proc/{worker}/task/{worker}/children").read_text().split():
                (worker,) = map(int, children)
            os.kill(worker, signal.SIGSTOP)
            while pool.counters["heartbeat_missed"] == 0:
                await trio.sleep(0.02)
        assert record.stop_reason == "missed heartbeat"
        assert pool.counters["heartbeat_kernel_watched"] == 0
        assert not pool.heartbeats.kernel_watched(record)
