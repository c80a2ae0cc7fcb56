"""LivePids: the node's instance pids kept as instances start and end, with
listeners told of each change (what the memory loop follows instead of walking
every instance every second)."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
from support import PID_HANDLER, eventually, unconfined_stack

from huselet.dispatch.instance import InstanceState
from huselet.dispatch.livepids import MAX_LISTENERS, LivePids


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, int]] = []

    def added(self, pid: int) -> None:
        self.events.append(("added", pid))

    def removed(self, pid: int) -> None:
        self.events.append(("removed", pid))


def test_listeners_hear_what_was_there_and_every_change() -> None:
    live = LivePids()
    a, b = object(), object()
    live.add(10, a)
    rec = Recorder()
    live.subscribe(rec)
    live.subscribe(rec)  # once only
    live.add(10, a)  # no change
    live.add(11, b)
    live.discard(10, a)
    live.discard(10, a)  # already gone
    assert rec.events == [("added", 10), ("added", 11), ("removed", 10)]
    assert list(live) == [11] and len(live) == 1 and 11 in live


def test_only_the_owner_removes_a_pid_and_a_reused_pid_is_a_new_process() -> None:
    live = LivePids()
    rec = Recorder()
    live.subscribe(rec)
    old, new = object(), object()
    live.add(5, old)
    live.add(5, new)  # reaped and reused before the old owner's teardown
    live.discard(5, old)  # the late discard must not drop the new instance
    assert 5 in live
    assert rec.events == [("added", 5), ("removed", 5), ("added", 5)]
    live.discard(5, new)
    assert 5 not in live


def test_subscriptions_are_bounded() -> None:
    live = LivePids()
    for _ in range(MAX_LISTENERS):
        live.subscribe(Recorder())
    with pytest.raises(RuntimeError, match="leak"):
        live.subscribe(Recorder())


async def test_the_dispatcher_follows_real_instances_as_they_start_and_end(
    short_tmp: Path,
) -> None:
    async with unconfined_stack(short_tmp, "p", PID_HANDLER, min_instances=3) as node:
        pool = node.pool("p")
        rec = Recorder()
        node.dispatcher.watch_pids(rec)

        def record_pids() -> set[int]:
            return {r.handle.pid for r in pool.instances.values() if r.handle and r.handle.pid}

        # A sandbox counts from its start (before its worker connects): its memory is real.
        await eventually(
            lambda: len(record_pids()) == 3 and set(node.dispatcher.live_pids) == record_pids()
        )
        await eventually(
            lambda: all(r.state is InstanceState.IDLE for r in pool.instances.values())
        )
        victim = next(iter(record_pids()))
        os.kill(victim, signal.SIGKILL)
        # Its teardown takes it out; the pool starts a replacement (min_instances).
        await eventually(lambda: ("removed", victim) in rec.events)
        await eventually(lambda: len(record_pids()) == 3 and victim not in record_pids())
        await eventually(lambda: set(node.dispatcher.live_pids) == record_pids())
        assert victim not in node.dispatcher.live_pids
        assert sorted(node.dispatcher.instance_pids()) == sorted(record_pids())
