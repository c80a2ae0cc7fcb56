"""The incremental counts on the dispatch hot path equal a recomputation.

``RequestBuffer.live_count()``, ``FunctionPool.starting`` and
``FunctionPool.live_count()`` are kept as counters so that a request (or an
idle-out) does not walk the queue or the instances. These tests drive random
sequences of every operation that changes them and compare the counters with
the walk they replace, after every step; a real pool under load is checked
the same way.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st
from support import running_stack, write_package

from huselet.dispatch.buffer import RequestBuffer
from huselet.dispatch.instance import InstanceRecord, InstanceState
from huselet.dispatch.invocation import Invocation, InvocationState
from huselet.dispatch.reasons import StopReason
from huselet.errors import DeadlineExceeded, Draining, QueueFull


def queued_by_walking(buf: RequestBuffer) -> int:
    """What live_count() used to compute on every call."""
    return len({id(inv) for inv in buf._queue if inv.state is InvocationState.QUEUED})


BUFFER_OPS = st.lists(
    st.tuples(
        st.sampled_from(["put", "get", "complete", "requeue", "expire", "fail_all", "put_twice"]),
        st.integers(0, 1000),
    ),
    max_size=60,
)


@settings(max_examples=300, deadline=None)
@given(ops=BUFFER_OPS, capacity=st.integers(1, 6))
def test_buffer_live_count_equals_a_walk_of_the_queue(
    ops: list[tuple[str, int]], capacity: int
) -> None:
    async def run() -> None:
        buf = RequestBuffer(capacity)
        known: list[Invocation] = []
        dispatched: list[Invocation] = []
        for op, n in ops:
            if op in ("put", "put_twice"):
                item = Invocation(
                    f"r{len(known)}", "f", b"", "bytes", trio.current_time() + 1 + n % 3
                )
                known.append(item)
                try:
                    buf.put(item)
                except QueueFull:
                    pass
            elif op == "get":
                got = buf.get_nowait()
                if got is not None:
                    dispatched.append(got)
            elif op == "complete" and known:
                known[n % len(known)].complete(DeadlineExceeded("caller left"))
            elif op == "requeue" and dispatched:
                item = dispatched.pop(n % len(dispatched))
                if not item.done:
                    buf.requeue(item)
            elif op == "expire":
                clock.jump(n % 3)  # some deadlines pass; get_nowait completes those
            elif op == "fail_all":
                buf.fail_all(Draining("bye"))
            if op == "put_twice" and known and known[-1].state is InvocationState.QUEUED:
                buf.requeue(known[-1])  # the same invocation twice in the queue
            assert buf.live_count() == queued_by_walking(buf), (op, n)
            assert buf.live_count() >= 0

    clock = trio.testing.MockClock()
    trio.run(run, clock=clock)


STATE_OPS = st.lists(
    st.tuples(
        st.sampled_from(["new", "state", "stop", "clear_stop"]),
        st.integers(0, 1000),
        st.sampled_from(list(InstanceState)),
    ),
    max_size=60,
)


@settings(max_examples=300, deadline=None)
@given(ops=STATE_OPS)
def test_starting_count_equals_a_walk_of_the_instances(
    ops: list[tuple[str, int, InstanceState]],
) -> None:
    async def run() -> None:
        count = [0]

        def changed(starting: bool) -> None:
            count[0] += 1 if starting else -1

        asked: set[str] = set()

        def asked_to_stop(record: InstanceRecord, stopping: bool) -> None:
            (asked.add if stopping else asked.discard)(record.id)

        records: list[InstanceRecord] = []
        for op, n, state in ops:
            if op == "new" or not records:
                records.append(InstanceRecord("f", None, changed, asked_to_stop))
                count[0] += 1  # the pool counts a new record as it creates it
                continue
            record = records[n % len(records)]
            if op == "state":
                record.state = state
            elif op == "stop":
                record.stop(list(StopReason)[n % len(StopReason)], n)
            elif op == "clear_stop":
                record.stop_reason = None
            walked = sum(
                1 for r in records if r.state is InstanceState.STARTING and r.stop_reason is None
            )
            assert count[0] == walked, (op, n, state)
            assert asked == {r.id for r in records if r.stop_reason is not None}, (op, n)

    trio.run(run)


SLOW = """
import time
def handler(event, context):
    time.sleep(0.05)
    return {}
"""


async def test_a_real_pool_keeps_its_counts_exact_under_a_burst(short_tmp: Path) -> None:
    write_package(short_tmp, "slow", SLOW)
    spec = {"name": "slow", "package": "pkgs/slow", "handler": "main:handler", "max_instances": 3}
    async with running_stack(short_tmp, [spec]) as node:
        pool = node.pool("slow")
        checks = 0

        def check() -> None:
            nonlocal checks
            checks += 1
            walked = sum(
                1
                for r in pool.instances.values()
                if r.state is InstanceState.STARTING and r.stop_reason is None
            )
            assert pool.starting == walked
            assert pool.live_count() == sum(
                1 for r in pool.instances.values() if r.stop_reason is None
            )
            assert pool.buffer.live_count() == queued_by_walking(pool.buffer)

        async def one(i: int) -> None:
            await node.dispatcher.invoke("slow", b"{}", "json", request_id=f"b{i}")
            check()

        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                for i in range(20):
                    nursery.start_soon(one, i)
                # While the burst is queued and instances start.
                await trio.testing.wait_all_tasks_blocked()
                check()
                assert pool.buffer.live_count() > 0
        check()
        assert pool.buffer.live_count() == 0 and checks == 22


@pytest.mark.parametrize("completed_while_queued", [True, False])
async def test_completing_a_queued_invocation_leaves_the_count(
    completed_while_queued: bool,
) -> None:
    buf = RequestBuffer(4)
    item = Invocation("a", "f", b"", "bytes", trio.current_time() + 10)
    buf.put(item)
    assert buf.live_count() == 1
    if completed_while_queued:
        item.complete(DeadlineExceeded("caller left"))
    else:
        assert buf.get_nowait() is item
        item.complete(DeadlineExceeded("too late"))
    assert buf.live_count() == 0
