"""The HTTP connections' lazy deadline timer (huselet.gateway.conntimer)."""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable

import trio
import trio.testing

from huselet.gateway.conntimer import MIN_COMPACT, STALE_FACTOR, ConnectionTimer


class Conn:
    """A connection as the timer sees it: records when it was expired."""

    def __init__(self) -> None:
        self.due = math.inf
        self.timer_at = math.inf
        self.expired_at: float | None = None

    def expire(self) -> None:
        self.expired_at = self.due  # the deadline it was expired for


def _run(scenario: Callable[[ConnectionTimer], Awaitable[None]]) -> None:
    """``scenario`` with a running timer, on a clock that jumps ahead when all sleep."""

    async def main() -> None:
        timer = ConnectionTimer()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(timer.run)
            await scenario(timer)
            nursery.cancel_scope.cancel()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def test_a_due_moved_later_expires_at_the_later_time() -> None:
    async def scenario(timer: ConnectionTimer) -> None:
        conn = Conn()
        timer.set_due(conn, 10.0)
        timer.set_due(conn, 30.0)  # later: the timer is not told until 10 s
        await trio.sleep_until(20.0)
        assert conn.expired_at is None
        await trio.sleep_until(31.0)
        assert conn.expired_at == 30.0

    _run(scenario)


def test_an_earlier_due_wakes_the_timer_sooner() -> None:
    async def scenario(timer: ConnectionTimer) -> None:
        slow, quick = Conn(), Conn()
        timer.set_due(slow, 100.0)
        await trio.sleep(1)  # the timer sleeps until 100 now
        timer.set_due(quick, 5.0)
        await trio.sleep_until(6.0)
        assert (quick.expired_at, slow.expired_at) == (5.0, None)

    _run(scenario)


def test_an_infinite_due_is_never_expired_and_a_new_one_is() -> None:
    # A handler runs (due = inf) past the deadline the timer was armed with.
    async def scenario(timer: ConnectionTimer) -> None:
        conn = Conn()
        timer.set_due(conn, 10.0)
        conn.due = math.inf  # what Connection._request_complete does
        await trio.sleep_until(50.0)
        assert conn.expired_at is None
        assert conn.timer_at == math.inf  # no entry left: nothing polls it
        timer.set_due(conn, 60.0)  # the reply went out: the idle deadline
        await trio.sleep_until(70.0)
        assert conn.expired_at == 60.0

    _run(scenario)


def test_forgotten_connections_are_skipped_and_the_heap_stays_bounded() -> None:
    timer = ConnectionTimer()
    live = Conn()
    timer.set_due(live, 1000.0)
    for i in range(10 * MIN_COMPACT):
        gone = Conn()
        timer.set_due(gone, 500.0 - i / 100)
        timer.forget(gone)
        # One live connection moving its deadline earlier each time leaves stale entries too.
        timer.set_due(live, 999.0 - i / 100)
    assert timer.registered == 1
    assert len(timer._heap) <= max(MIN_COMPACT, STALE_FACTOR * timer.registered) + 1
    timer.fire(2000.0)
    assert live.expired_at == 999.0 - (10 * MIN_COMPACT - 1) / 100
    assert timer._heap == []
