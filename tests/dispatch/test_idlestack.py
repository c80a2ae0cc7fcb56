"""IdleStack: the instance that became idle last takes the next request (LIFO),
in the buffer alone and with real worker processes behind a pool."""

from __future__ import annotations

import json
from pathlib import Path

import trio
import trio.testing
from support import PID_HANDLER, eventually, unconfined_stack

from huselet.dispatch.buffer import RequestBuffer
from huselet.dispatch.idlestack import IdleStack
from huselet.dispatch.instance import InstanceState
from huselet.dispatch.invocation import Invocation


def inv(rid: str) -> Invocation:
    return Invocation(rid, "f", b"", "bytes", trio.current_time() + 10)


async def test_the_getter_that_parked_last_is_woken_first() -> None:
    buf = RequestBuffer(8)
    got: list[tuple[str, str]] = []

    async def getter(name: str) -> None:
        got.append((name, (await buf.get()).request_id))

    async with trio.open_nursery() as nursery:
        for name in ("first", "second", "third"):
            nursery.start_soon(getter, name)
            await trio.testing.wait_all_tasks_blocked()  # parked in this order
        assert buf.idle_getters == 3
        for rid in ("a", "b", "c"):
            buf.put(inv(rid))
            await trio.testing.wait_all_tasks_blocked()
    assert got == [("third", "a"), ("second", "b"), ("first", "c")]


async def test_a_cancelled_park_leaves_the_stack() -> None:
    stack = IdleStack()
    woken: list[str] = []

    async def park(name: str, scope: trio.CancelScope) -> None:
        with scope:
            await stack.park()
            woken.append(name)

    async with trio.open_nursery() as nursery:
        older, newer = trio.CancelScope(), trio.CancelScope()
        nursery.start_soon(park, "older", older)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(park, "newer", newer)
        await trio.testing.wait_all_tasks_blocked()
        newer.cancel()
        await trio.testing.wait_all_tasks_blocked()
        assert len(stack) == 1
        assert stack.unpark()
        assert not stack.unpark()
    assert woken == ["older"]


async def test_requests_one_at_a_time_stay_on_one_warm_instance(short_tmp: Path) -> None:
    """With several idle instances, a trickle of requests does not round-robin over
    them all: the instance that just answered takes the next one."""
    async with unconfined_stack(short_tmp, "w", PID_HANDLER, min_instances=4) as node:
        pool = node.pool("w")

        def all_idle() -> bool:
            states = [r.state for r in pool.instances.values()]
            return len(states) == 4 and all(s is InstanceState.IDLE for s in states)

        await eventually(all_idle)
        pids = []
        for _ in range(8):
            result = await node.dispatcher.invoke("w", b"{}", "json")
            pids.append(json.loads(result.body)["pid"])
        assert len(set(pids)) == 1, pids
