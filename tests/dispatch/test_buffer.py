"""RequestBuffer: bounds, pull order, and never delivering what already timed out."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import trio
import trio.testing

from huselet.dispatch.buffer import HandOvers, RequestBuffer
from huselet.dispatch.invocation import Invocation, InvocationState
from huselet.errors import DeadlineExceeded, Draining, QueueFull


def inv(rid: str, timeout: float = 10.0) -> Invocation:
    return Invocation(rid, "f", b"", "bytes", trio.current_time() + timeout)


async def test_fifo_and_dispatch_marks() -> None:
    buf = RequestBuffer(4)
    a, b = inv("a"), inv("b")
    buf.put(a)
    buf.put(b)
    assert buf.live_count() == 2
    assert await buf.get() is a and a.state is InvocationState.DISPATCHED
    assert buf.get_nowait() is b
    assert buf.get_nowait() is None


async def test_full_queue_refuses_with_429_but_reclaims_done_entries() -> None:
    buf = RequestBuffer(2)
    a = inv("a")
    buf.put(a)
    buf.put(inv("b"))
    with pytest.raises(QueueFull) as info:
        buf.put(inv("c"))
    assert info.value.status == 429 and info.value.retry_after_s == 1
    a.complete(DeadlineExceeded("gone"))  # its caller gave up: the slot is free again
    buf.put(inv("c"))
    assert [buf.get_nowait().request_id, buf.get_nowait().request_id] == ["b", "c"]


async def test_expired_and_done_invocations_are_never_delivered(
    autojump_clock: trio.testing.MockClock,
) -> None:
    buf = RequestBuffer(8)
    expired, cancelled, live = inv("old", timeout=1), inv("gone"), inv("live", timeout=60)
    for item in (expired, cancelled, live):
        buf.put(item)
    cancelled.complete(DeadlineExceeded("caller left"))
    await trio.sleep(2)
    assert await buf.get() is live
    with pytest.raises(DeadlineExceeded, match="waited"):
        expired.result()


async def test_parked_getter_wakes_on_put() -> None:
    buf = RequestBuffer(8)
    got: list[Invocation] = []

    async def getter() -> None:
        got.append(await buf.get())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(getter)
        await trio.testing.wait_all_tasks_blocked()
        assert buf.idle_getters == 1
        item = inv("x")
        buf.put(item)
    assert got == [item]


async def test_fail_all_completes_every_queued_invocation() -> None:
    buf = RequestBuffer(8)
    items = [inv(str(i)) for i in range(3)]
    for item in items:
        buf.put(item)
    assert buf.fail_all(Draining("bye")) == 3
    for item in items:
        with pytest.raises(Draining):
            item.result()
    assert len(buf) == 0


async def test_a_new_request_goes_straight_to_the_taker_that_registered_last() -> None:
    # LIFO: the instance that became idle last (see huselet.dispatch.idlestack).
    buf = RequestBuffer(4)
    taken: list[tuple[str, str]] = []

    def taker(name: str) -> Callable[[], None]:
        def take() -> None:
            got = buf.get_nowait()
            assert got is not None
            taken.append((name, got.request_id))

        return take

    buf.add_taker("first", taker("first"))
    buf.add_taker("second", taker("second"))
    assert buf.idle_getters == 2
    with trio.testing.assert_no_checkpoints():  # no task wakes up for it
        buf.put(inv("a"))
    assert taken == [("second", "a")] and buf.live_count() == 0
    retried = inv("b")
    buf.requeue(retried)  # a retry is handed over the same way
    assert taken[-1] == ("first", "b") and buf.idle_getters == 0
    buf.put(inv("c"))  # no taker left: it waits in the queue
    assert buf.live_count() == 1


async def test_a_taker_that_takes_nothing_is_dropped_and_the_next_one_is_asked() -> None:
    buf = RequestBuffer(4)
    asked: list[str] = []

    def ready() -> None:
        asked.append("ready")
        buf.get_nowait()

    buf.add_taker("ready", ready)
    buf.add_taker("stopping", lambda: asked.append("stopping"))  # e.g. its instance stopped
    buf.add_taker("gone", lambda: asked.append("gone"))
    buf.remove_taker("gone")
    buf.put(inv("a"))
    assert asked == ["stopping", "ready"] and buf.live_count() == 0
    assert buf.idle_getters == 0


async def test_fail_expiring_answers_only_what_cannot_wait_past_the_cutoff() -> None:
    buf = RequestBuffer(8)
    short, late, done = inv("short", timeout=1), inv("late", timeout=60), inv("done", timeout=1)
    for item in (short, late, done):
        buf.put(item)
    done.complete(DeadlineExceeded("caller left"))  # already answered: not again
    assert buf.fail_expiring(trio.current_time() + 5, Draining("no start")) == 1
    with pytest.raises(Draining):
        short.result()
    with pytest.raises(DeadlineExceeded):
        done.result()
    assert buf.live_count() == 1 and buf.get_nowait() is late


def _share_takers(
    buf: RequestBuffer, taken: dict[str, list[str]]
) -> Callable[[str], Callable[[], None]]:
    def taker(name: str) -> Callable[[], None]:
        def take() -> None:
            got = taken.setdefault(name, [])
            for _ in range(buf.share):  # its share, as serving._dispatch_inline takes it
                one = buf.get_nowait()
                if one is None:
                    break
                got.append(one.request_id)

        return take

    return taker


async def test_hand_overs_in_a_batch_wait_for_its_end_then_are_shared_out() -> None:
    buf = RequestBuffer(10)
    batch = buf.hand_overs = HandOvers()
    taken: dict[str, list[str]] = {}
    taker = _share_takers(buf, taken)
    for name in ("a", "b", "c"):
        buf.add_taker(name, taker(name))
    with batch:
        for i in range(7):
            buf.put(inv(f"r{i}"))
        with batch:
            pass  # nested: only the outermost ends the batch
        assert not taken and buf.live_count() == 7
    # The newest taker first; each an equal share of what is left (rounded up).
    assert taken == {"c": ["r0", "r1", "r2"], "b": ["r3", "r4"], "a": ["r5", "r6"]}
    assert buf.share == 0 and buf.live_count() == 0
    # Outside a batch a request goes to a taker at once, one each.
    buf.add_taker("d", taker("d"))
    buf.put(inv("r7"))
    assert taken["d"] == ["r7"]


async def test_a_batch_that_ends_in_an_error_still_hands_over() -> None:
    buf = RequestBuffer(10)
    batch = buf.hand_overs = HandOvers()
    taken: dict[str, list[str]] = {}
    buf.add_taker("a", _share_takers(buf, taken)("a"))
    with pytest.raises(RuntimeError), batch:
        buf.put(inv("r0"))
        raise RuntimeError("a bad frame after a good call")
    assert taken == {"a": ["r0"]}


async def test_a_batch_that_leaves_requests_queued_asks_the_pool_to_scale_again() -> None:
    # While a batch's requests were put, the idle instances' credit counted as
    # spare capacity; once the hand-over spent it, the pool must look again.
    buf = RequestBuffer(10)
    batch = buf.hand_overs = HandOvers()
    scaled: list[int] = []
    buf.after_batch = lambda: scaled.append(buf.live_count())
    buf.add_taker("one", lambda: buf.get_nowait())  # takes one: its pool may still grow
    with batch:
        for i in range(3):
            buf.put(inv(f"r{i}"))
    assert scaled == [2]
    taken: dict[str, list[str]] = {}
    buf.add_taker("all", _share_takers(buf, taken)("all"))
    with batch:
        buf.put(inv("r3"))
    assert taken == {"all": ["r1", "r2", "r3"]} and scaled == [2]  # nothing left: no call
