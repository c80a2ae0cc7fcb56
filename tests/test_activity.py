"""ActivityCount: waiters wake exactly when the count returns to zero."""

import pytest
import trio
import trio.testing

from huselet.activity import ActivityCount, wait_all_zero


async def test_wait_zero_returns_at_once_when_idle() -> None:
    count = ActivityCount()
    assert not count
    with trio.fail_after(5):
        await count.wait_zero()


async def test_wait_zero_wakes_when_the_last_holder_leaves() -> None:
    count = ActivityCount()
    woke = trio.Event()
    count.enter()
    count.enter()

    async def waiter() -> None:
        await count.wait_zero()
        woke.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(waiter)
        await trio.testing.wait_all_tasks_blocked()
        count.leave()
        await trio.testing.wait_all_tasks_blocked()
        assert not woke.is_set()  # one holder left
        count.leave()
        with trio.fail_after(5):
            await woke.wait()
    assert count.count == 0


async def test_a_count_that_rises_again_keeps_the_waiter_waiting() -> None:
    count = ActivityCount()
    count.enter()
    done = trio.Event()

    async def waiter() -> None:
        await count.wait_zero()
        done.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(waiter)
        await trio.testing.wait_all_tasks_blocked()
        count.leave()
        count.enter()  # before the waiter ran: zero was only a moment
        await trio.testing.wait_all_tasks_blocked()
        assert not done.is_set()
        count.leave()
        with trio.fail_after(5):
            await done.wait()


async def test_wait_all_zero_needs_every_count_idle() -> None:
    a, b = ActivityCount(), ActivityCount()
    a.enter()
    b.enter()
    done = trio.Event()

    async def waiter() -> None:
        await wait_all_zero([a, b])
        done.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(waiter)
        b.leave()
        await trio.testing.wait_all_tasks_blocked()
        assert not done.is_set()
        a.leave()
        with trio.fail_after(5):
            await done.wait()


def test_leave_without_enter_is_a_bug() -> None:
    with pytest.raises(RuntimeError):
        ActivityCount().leave()


def test_hold_leaves_on_error() -> None:
    count = ActivityCount()
    with pytest.raises(ValueError), count.hold():
        assert count.count == 1
        raise ValueError
    assert count.count == 0
