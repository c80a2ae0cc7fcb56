"""Periodic wake-ups on a shared time grid, so an idle daemon's timers fire together.

Each wake-up of the event loop costs ~100 µs of CPU here (the epoll return,
the timer's cancel scope, the task step), whatever the task then does; a
second task woken in the same loop iteration costs a fifth of that. An idle
node ran a dozen periodic loops (lag probe, pressure loops, observers, the
fork runtime's housekeeping, heartbeats), each sleeping ``period`` from
wherever it last woke, so their phases drifted apart and nearly every one of
them was a wake-up of its own (issue 12: idle instances must cost ~nothing).

Here a loop sleeps until the next multiple of its period on the Trio clock:
every loop whose period is a multiple of another's wakes in that one's
iteration (the 1 s loops ride on the lag probe's 100 ms ticks), and a
heartbeat due "some time in this second" is rounded up onto the same grid.
Intervals stay exact: a loop on the grid wakes once per period, only its
first sleep is shorter (the phase).
"""

from __future__ import annotations

import math

import trio

# The grids a deadline may be rounded up to, coarsest first: each a multiple of
# the lag probe's default 100 ms, so what is rounded wakes in its iterations.
GRIDS_S = (1.0, 0.5, 0.2, 0.1)


def next_on_grid(now: float, period: float) -> float:
    """The first multiple of ``period`` strictly after ``now`` (``period`` > 0)."""
    if not period > 0:
        raise ValueError(f"a grid period must be positive, got {period}")
    return (math.floor(now / period) + 1) * period


def round_up_to_grid(due: float, period: float) -> float:
    """``due`` itself if it lies on the grid, else the next multiple of ``period``."""
    if not period > 0:
        raise ValueError(f"a grid period must be positive, got {period}")
    return math.ceil(due / period) * period


def coarsest_grid(span: float, *, share: float = 0.25) -> float | None:
    """The coarsest of :data:`GRIDS_S` that delays a wait of ``span`` by at most
    ``share`` of it when its deadline is rounded up; None if even the finest would."""
    for grid in GRIDS_S:
        if grid <= span * share:
            return grid
    return None


async def sleep_on_grid(period: float) -> float:
    """Sleep until the next multiple of ``period`` on the Trio clock; that time."""
    due = next_on_grid(trio.current_time(), period)
    await trio.sleep_until(due)
    return due
