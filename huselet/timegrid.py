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
iteration (the 0.5-5 s loops and the lag probe's 1 s reports together), and a
heartbeat due "some time in this second" is rounded up onto the same grid.
Intervals stay exact: a loop on the grid wakes once per period, only its
first sleep is shorter (the phase).

Sleeping itself is cheaper too. ``trio.sleep_until`` is a cancel scope whose
deadline cancels the sleeper: per wake-up a scope, a ``Cancelled`` exception
with its traceback and an outcome — the largest item in a profile of an idle
daemon. :func:`sleep_on_grid` instead parks the task on one :class:`GridTimer`
per Trio run: a system task that alone sleeps until the earliest due time and
then reschedules every task due by then (a plain reschedule, no exception).
"""

from __future__ import annotations

import heapq
import itertools
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


async def sleep_until_woken(due: float, wakeup: trio.Event) -> trio.Event:
    """Sleep until ``due`` (``math.inf``: no deadline) or until ``wakeup`` is set;
    a fresh event to wait on next time (the owner keeps it and sets it to wake us)."""
    with trio.move_on_at(due):
        await wakeup.wait()
    return trio.Event()


# Stale entries (sleeps cancelled before they were due) are dropped when they
# come due; the heap is compacted once it holds this many more than are parked.
COMPACT_SLACK = 64


class GridTimer:
    """Tasks parked until a due time, woken by one system task that sleeps for them all.

    Start one per Trio run with :meth:`current` (it spawns the system task on
    first use). A parked sleep is cancellable like any Trio sleep.
    """

    _run_timer: trio.lowlevel.RunVar[GridTimer] = trio.lowlevel.RunVar("huselet_grid_timer")

    def __init__(self) -> None:
        self._heap: list[tuple[float, int]] = []  # (due, key), earliest first
        self._parked: dict[int, trio.lowlevel.Task] = {}
        self._keys = itertools.count()
        self._head_moved = trio.Event()  # a sleep due before the current head was parked

    @classmethod
    def current(cls) -> GridTimer:
        """This Trio run's timer (its system task started on first use)."""
        try:
            return cls._run_timer.get()
        except LookupError:
            timer = cls()
            cls._run_timer.set(timer)
            trio.lowlevel.spawn_system_task(timer._run, name="huselet.timegrid")
            return timer

    def __len__(self) -> int:
        """Tasks parked now."""
        return len(self._parked)

    async def sleep_until(self, due: float) -> None:
        """Park the calling task until ``due`` (Trio clock); cancellable."""
        key = next(self._keys)
        self._parked[key] = trio.lowlevel.current_task()
        if not self._heap or due < self._heap[0][0]:
            self._head_moved.set()
        heapq.heappush(self._heap, (due, key))
        if len(self._heap) > 2 * len(self._parked) + COMPACT_SLACK:
            self._heap = [entry for entry in self._heap if entry[1] in self._parked]
            heapq.heapify(self._heap)

        def abort(_: object) -> trio.lowlevel.Abort:
            self._parked.pop(key, None)  # its heap entry is dropped when it comes due
            return trio.lowlevel.Abort.SUCCEEDED

        await trio.lowlevel.wait_task_rescheduled(abort)

    async def _run(self) -> None:
        # A system task: an exception here would end the Trio run, so nothing in
        # this loop raises (the heap and dict hold plain values).
        while True:
            due = self._heap[0][0] if self._heap else math.inf
            if due > trio.current_time():
                self._head_moved = await sleep_until_woken(due, self._head_moved)
                continue
            now = trio.current_time()
            while self._heap and self._heap[0][0] <= now:
                task = self._parked.pop(heapq.heappop(self._heap)[1], None)
                if task is not None:
                    trio.lowlevel.reschedule(task)


async def sleep_on_grid(period: float) -> float:
    """Sleep until the next multiple of ``period`` on the Trio clock; that time."""
    due = next_on_grid(trio.current_time(), period)
    await GridTimer.current().sleep_until(due)
    return due
