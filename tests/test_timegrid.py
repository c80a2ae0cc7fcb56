"""The shared time grid: periodic loops whose periods divide each other wake in one
loop iteration, and a rounded deadline is late by at most its share of the wait.

Trio's MockClock (autojump) stands in for wall time: it is Trio's own clock for
tests, so the wake-ups counted here are exactly the ones the loop would make.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest
import trio
import trio.testing

from huselet.timegrid import (
    COMPACT_SLACK,
    GRIDS_S,
    GridTimer,
    coarsest_grid,
    next_on_grid,
    round_up_to_grid,
    sleep_on_grid,
)


def test_next_on_grid_is_strictly_after_and_a_multiple() -> None:
    assert next_on_grid(10.0, 0.5) == 10.5  # on the grid: the next point, never "now"
    assert next_on_grid(10.2, 0.5) == 10.5
    assert next_on_grid(10.49, 1.0) == 11.0
    assert round_up_to_grid(10.0, 0.5) == 10.0  # a due time on the grid stays
    assert round_up_to_grid(10.01, 0.5) == 10.5
    with pytest.raises(ValueError, match="positive"):
        next_on_grid(1.0, 0.0)
    with pytest.raises(ValueError, match="positive"):
        round_up_to_grid(1.0, -1.0)


@pytest.mark.parametrize("span", [0.05, 0.3, 0.45, 1.0, 2.0, 3.9, 4.0, 300.0])
def test_rounding_delays_a_wait_by_at_most_its_share(span: float) -> None:
    grid = coarsest_grid(span)
    if grid is None:
        assert span * 0.25 < min(GRIDS_S)  # too short a wait to round
        return
    assert grid <= span * 0.25
    coarser = [g for g in GRIDS_S if g > grid]
    assert all(g > span * 0.25 for g in coarser)  # the coarsest that fits
    now = 1234.567
    due = round_up_to_grid(now + span, grid)
    assert now + span <= due < now + span + grid


def test_every_grid_is_a_multiple_of_the_lag_probes_default_period() -> None:
    # Rounded deadlines must land on the lag probe's 100 ms ticks to share them.
    assert all(round(g / 0.1, 9) == int(round(g / 0.1, 9)) for g in GRIDS_S)


async def wake_times(
    sleep_for: Callable[[float], Awaitable[object]],
    periods: list[float],
    until: float,
    phases: list[float] | None = None,
) -> set[float]:
    """When loops of ``periods`` woke up before ``until`` (Trio clock), each first
    sleeping its phase, then ``sleep_for(period)`` again and again."""
    woke: set[float] = set()

    async def loop(period: float, phase: float) -> None:
        await trio.sleep(phase)
        while trio.current_time() < until:
            await sleep_for(period)
            if trio.current_time() <= until:
                woke.add(round(trio.current_time(), 6))

    async with trio.open_nursery() as nursery:
        for period, phase in zip(periods, phases or [0.0] * len(periods), strict=True):
            nursery.start_soon(loop, period, phase)
    return woke


# The daemon's idle loops: lag probe, observers, memory and fork housekeeping, fd, disk.
PERIODS = [0.1, 0.5, 0.5, 0.5, 1.0, 1.0, 2.0, 5.0]


async def test_loops_on_the_grid_wake_only_on_the_fastest_loops_ticks(
    autojump_clock: trio.testing.MockClock,
) -> None:
    autojump_clock.jump(1000.037)  # an arbitrary phase, as a real daemon starts at
    start = trio.current_time()
    phases = [0.0, 0.013, 0.027, 0.041, 0.055, 0.069, 0.083, 0.097]  # started apart
    woke = await wake_times(sleep_on_grid, PERIODS, start + 20, phases)
    # 20 s of 8 loops: only the lag probe's 200 ticks, not ~370 wake-ups.
    assert len(woke) <= 200
    assert all(abs(t * 10 - round(t * 10)) < 1e-6 for t in woke)


async def test_loops_sleeping_their_period_from_their_own_phase_wake_apart(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """What the grid replaces (and what the test above would see without it)."""
    autojump_clock.jump(1000.037)
    phases = [0.0, 0.013, 0.027, 0.041, 0.055, 0.069, 0.083, 0.097]
    woke = await wake_times(trio.sleep, PERIODS, trio.current_time() + 20, phases)
    assert len(woke) > 300


async def test_grid_sleeps_are_cancellable_and_leave_nothing_parked(
    autojump_clock: trio.testing.MockClock,
) -> None:
    timer = GridTimer.current()
    start = trio.current_time()
    woke: list[float] = []

    async def sleeper(delay: float) -> None:
        await timer.sleep_until(start + delay)
        woke.append(trio.current_time() - start)

    async with trio.open_nursery() as nursery:
        for delay in (3.0, 1.0, 2.0):
            nursery.start_soon(sleeper, delay)
        with trio.move_on_after(0.5) as scope:
            await timer.sleep_until(start + 100)  # cancelled long before it is due
        assert scope.cancelled_caught
    assert woke == [1.0, 2.0, 3.0]  # each at its due time, earliest first
    assert len(timer) == 0
    # Many cancelled sleeps: the heap is compacted, not grown without bound.
    for _ in range(500):
        with trio.move_on_after(0.01):
            await timer.sleep_until(trio.current_time() + 1000)
    assert len(timer._heap) <= 2 * len(timer) + COMPACT_SLACK + 1


async def test_a_sleep_parked_before_the_head_wakes_the_timer_early(
    autojump_clock: trio.testing.MockClock,
) -> None:
    timer = GridTimer.current()
    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(timer.sleep_until, start + 60)  # the timer sleeps until +60
        await trio.testing.wait_all_tasks_blocked()
        await timer.sleep_until(start + 1)  # ... and must wake for this one first
        assert trio.current_time() - start == 1.0
        nursery.cancel_scope.cancel()


def test_each_trio_run_has_its_own_timer() -> None:
    async def which() -> GridTimer:
        await sleep_on_grid(0.1)
        return GridTimer.current()

    first, second = trio.run(which), trio.run(which)
    assert first is not second
