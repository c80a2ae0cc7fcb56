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


# --- an idle node stretches its tick --------------------------------------------------


async def stretched_wakes(timer: GridTimer, period: float, until: float) -> list[float]:
    """When a loop sleeping ``stretch=True`` on ``period`` woke, until ``until``."""
    woke = []
    while trio.current_time() < until:
        woke.append(round(await timer.sleep_on_grid(period, stretch=True), 6))
    return woke


async def test_a_quiet_node_ticks_every_idle_tick_and_activity_snaps_back_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    autojump_clock.jump(1000.3)
    timer = GridTimer.current()
    timer.configure_idle(tick_s=5.0, after_s=10.0)  # busy from now (1000.3)
    activity_at = 1027.4  # quiet since ~1011: the loop sleeps until 1030 then

    async def request() -> None:
        await trio.sleep_until(activity_at)
        assert timer.stretched == 1  # parked until 1030, on the idle tick
        timer.note_activity()
        assert timer.stretched == 0  # re-parked on its own period, at once

    async with trio.open_nursery() as nursery:
        nursery.start_soon(request)
        woke = await stretched_wakes(timer, 1.0, 1045.0)
    busy = [t for t in woke if t <= 1011]
    assert busy == [float(t) for t in range(1001, 1012)]  # every second while busy
    # Quiet: on the idle tick's multiples; the activity at 1027.4 wakes it at 1028,
    # not 1030, and it ticks every second for idle_after_s before stretching again.
    assert [t for t in woke if 1011 < t <= 1028] == [1015.0, 1020.0, 1025.0, 1028.0]
    assert [t for t in woke if 1028 < t <= 1038] == [float(t) for t in range(1029, 1039)]
    assert [t for t in woke if t > 1038] == [1040.0, 1045.0]
    assert timer.snap_backs == 1


async def test_activity_while_busy_keeps_the_one_second_tick(
    autojump_clock: trio.testing.MockClock,
) -> None:
    timer = GridTimer.current()
    timer.configure_idle(tick_s=5.0, after_s=3.0)
    start = trio.current_time()

    async def busy() -> None:
        while trio.current_time() < start + 20:
            timer.note_activity()  # a request every 2 s: never 3 s without one
            await trio.sleep(2.0)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(busy)
        woke = await stretched_wakes(timer, 1.0, start + 20)
    assert len(woke) >= 20 and timer.snap_backs == 0  # never stretched


async def test_without_an_idle_tick_or_stretch_nothing_stretches(
    autojump_clock: trio.testing.MockClock,
) -> None:
    timer = GridTimer.current()
    start = trio.current_time()
    woke = await stretched_wakes(timer, 1.0, start + 30)  # not configured: 1 s throughout
    assert len(woke) == 30
    timer.configure_idle(tick_s=5.0, after_s=0.0)  # quiet at once
    plain = []
    while trio.current_time() < start + 60:
        plain.append(await sleep_on_grid(1.0))  # stretch not asked for: 1 s throughout
    assert len(plain) == 30
    # A loop whose period is the idle tick's or longer is left as it is.
    assert await timer.sleep_on_grid(10.0, stretch=True) - trio.current_time() == 0
    with pytest.raises(ValueError, match="positive"):
        timer.configure_idle(tick_s=0.0, after_s=1.0)


async def test_a_stretched_sleep_is_cancellable_and_switching_off_wakes_the_stretched(
    autojump_clock: trio.testing.MockClock,
) -> None:
    timer = GridTimer.current()
    timer.configure_idle(tick_s=60.0, after_s=0.0)
    with trio.move_on_after(5):
        await timer.sleep_on_grid(1.0, stretch=True)
    assert timer.stretched == 0 and len(timer) == 0  # cancelled: nothing left parked
    start = trio.current_time()

    async def switch_off() -> None:
        await trio.testing.wait_all_tasks_blocked()
        timer.configure_idle(tick_s=None, after_s=0.0)  # stretching off: snap back

    async with trio.open_nursery() as nursery:
        nursery.start_soon(switch_off)
        woke_at = await timer.sleep_on_grid(1.0, stretch=True)
    assert woke_at - start <= 1.0  # on its own period, not the 60 s tick


def test_long_waits_of_instances_started_apart_fall_due_together() -> None:
    """2,000 idle instances started over 15 s: their 300 s heartbeat checks (rounded
    as heartbeat.py rounds them) are one round, not one wake-up per second of starts."""
    starts = [1000.3 + i * 15 / 2000 for i in range(2000)]
    due = set()
    for t in starts:
        grid = coarsest_grid(300.0)
        assert grid is not None and grid % 5.0 == 0  # on the default idle tick's multiples
        due.add(round_up_to_grid(t + 300.0, grid))
    assert len(due) <= 2
    assert all(t + 300.0 <= min(d for d in due if d >= t + 300.0) <= t + 375.0 for t in starts)


async def test_a_sleep_until_activity_is_not_woken_while_quiet(
    autojump_clock: trio.testing.MockClock,
) -> None:
    timer = GridTimer.current()
    timer.configure_idle(tick_s=5.0, after_s=0.0)
    start = trio.current_time()

    async def activity_later() -> None:
        await trio.sleep(500.0)  # a hundred idle ticks without a wake-up
        timer.note_activity()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(activity_later)
        woke_at = await timer.sleep_on_grid(1.0, until_activity=True)
    assert woke_at - start == 501.0  # the next 1 s point after the activity
    # Busy again (the wake saw the activity): its period, not the idle tick or forever.
    timer.configure_idle(tick_s=5.0, after_s=10.0)
    assert await timer.sleep_on_grid(1.0, until_activity=True) - woke_at == 1.0
