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

An idle node stretches its tick. Once :meth:`GridTimer.configure_idle` set an
idle tick (the daemon: ``[health] idle_tick_ms``), a loop that sleeps with
``stretch=True`` while nothing happened for ``idle_after_s`` (no request, no
instance started or ended, no loop under pressure: whatever calls
:func:`note_activity`) sleeps to the next multiple of the idle tick instead
of its period: an idle daemon wakes once per idle tick, not once a second.
A loop that only reports what activity brings (an observer of faults that are
themselves activity) sleeps with ``until_activity=True`` instead: while the
node is quiet it is not woken at all.
The first activity snaps every stretched sleeper back at once: each is
re-parked for the next multiple of its own period from that moment, so the
1 s cadence resumes within one period of the first request or start.
"""

from __future__ import annotations

import heapq
import itertools
import math

import trio

# The grids a deadline may be rounded up to, coarsest first: each a multiple of
# the lag probe's default 100 ms, so what is rounded wakes in its iterations, and
# the coarse ones of the default idle tick (5 s), so a quiet node's long waits (an
# idle instance's 300 s heartbeat check) fall due together, on its idle ticks: the
# checks of 2,000 instances started over a few seconds are one round a minute
# apart at most, not one wake-up per second of their starts.
GRIDS_S = (60.0, 30.0, 10.0, 5.0, 1.0, 0.5, 0.2, 0.1)


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


# Stale entries (sleeps cancelled before they were due, or re-parked by a snap-back)
# are dropped when they come due; the heap is compacted once it holds this many more
# than are parked.
COMPACT_SLACK = 64


class _Sleeper:
    """One parked sleep: its task, its heap key, its due time and (stretched) period."""

    __slots__ = ("due", "key", "period", "task")

    def __init__(self, task: trio.lowlevel.Task, key: int, due: float, period: float) -> None:
        self.task = task
        self.key = key
        self.due = due
        self.period = period


class GridTimer:
    """Tasks parked until a due time, woken by one system task that sleeps for them all.

    Start one per Trio run with :meth:`current` (it spawns the system task on
    first use). A parked sleep is cancellable like any Trio sleep.
    """

    _run_timer: trio.lowlevel.RunVar[GridTimer] = trio.lowlevel.RunVar("huselet_grid_timer")

    def __init__(self) -> None:
        self._heap: list[tuple[float, int]] = []  # (due, key), earliest first
        self._parked: dict[int, _Sleeper] = {}
        self._keys = itertools.count()
        self._head_moved = trio.Event()  # a sleep due before the current head was parked
        # Idle stretching (off until configure_idle): the idle tick, how long without
        # activity makes the node idle, and the stretched sleepers by heap key.
        self.idle_tick_s: float | None = None
        self.idle_after_s = math.inf
        self._last_active = -math.inf
        self._busy = False  # activity noted since the quiet check last looked
        self._stretched: dict[int, _Sleeper] = {}
        self.snap_backs = 0  # times activity woke stretched sleepers (tests, ctl)

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

    # --- idle stretching ------------------------------------------------------------

    def configure_idle(self, *, tick_s: float | None, after_s: float) -> None:
        """Stretch ``stretch=True`` sleeps to ``tick_s`` once nothing happened for
        ``after_s`` seconds (None: never stretch). The node counts as busy from now."""
        if tick_s is not None and not tick_s > 0:
            raise ValueError(f"an idle tick must be positive, got {tick_s}")
        if not after_s >= 0:
            raise ValueError(f"idle_after must not be negative, got {after_s}")
        self.idle_tick_s = tick_s
        self.idle_after_s = after_s
        self._last_active = trio.current_time()
        if tick_s is None:
            self._snap_back()

    def note_activity(self) -> None:
        """Something happened (a request, a start, pressure): the node is not idle.

        O(1) unless sleepers are stretched (then they are woken back onto their
        own periods, once). Called on every request: keep it cheap."""
        self._busy = True
        if self._stretched:
            self._snap_back()

    def quiet(self) -> bool:
        """Has nothing happened for ``idle_after_s``? (Always False when not configured.)"""
        if self.idle_tick_s is None:
            return False
        now = trio.current_time()
        if self._busy:
            self._busy = False
            self._last_active = now
        return now - self._last_active >= self.idle_after_s

    @property
    def stretched(self) -> int:
        """Sleepers parked on the idle tick now."""
        return len(self._stretched)

    def _snap_back(self) -> None:
        stretched, self._stretched = self._stretched, {}
        if not stretched:
            return
        self.snap_backs += 1
        now = trio.current_time()
        for sleeper in stretched.values():
            if self._parked.pop(sleeper.key, None) is None:
                continue  # woken or cancelled meanwhile
            # Its old heap entry is stale now (dropped when it comes due).
            self._park(sleeper, next_on_grid(now, sleeper.period))

    # --- parking ----------------------------------------------------------------------

    def _park(self, sleeper: _Sleeper, due: float) -> None:
        sleeper.key = next(self._keys)
        sleeper.due = due
        self._parked[sleeper.key] = sleeper
        if not self._heap or due < self._heap[0][0]:
            self._head_moved.set()
        heapq.heappush(self._heap, (due, sleeper.key))
        if len(self._heap) > 2 * len(self._parked) + COMPACT_SLACK:
            self._heap = [entry for entry in self._heap if entry[1] in self._parked]
            heapq.heapify(self._heap)

    async def sleep_until(self, due: float) -> None:
        """Park the calling task until ``due`` (Trio clock); cancellable."""
        await self._sleep(due, 0.0, stretched=False)

    async def sleep_on_grid(
        self, period: float, *, stretch: bool = False, until_activity: bool = False
    ) -> float:
        """Park until the next multiple of ``period`` — of the idle tick instead, when
        ``stretch`` and the node is quiet (until activity snaps it back), or until
        activity alone with ``until_activity`` (a loop that only reports what
        activity brings); the time it was due at when woken."""
        now = trio.current_time()
        tick = self.idle_tick_s
        if (stretch or until_activity) and tick is not None and tick > period and self.quiet():
            due = math.inf if until_activity else next_on_grid(now, tick)
            return await self._sleep(due, period, stretched=True)
        return await self._sleep(next_on_grid(now, period), period, stretched=False)

    async def _sleep(self, due: float, period: float, *, stretched: bool) -> float:
        sleeper = _Sleeper(trio.lowlevel.current_task(), 0, due, period)
        self._park(sleeper, due)
        if stretched:
            self._stretched[sleeper.key] = sleeper

        def abort(_: object) -> trio.lowlevel.Abort:
            # Its heap entry is dropped when it comes due.
            self._parked.pop(sleeper.key, None)
            self._stretched.pop(sleeper.key, None)
            return trio.lowlevel.Abort.SUCCEEDED

        await trio.lowlevel.wait_task_rescheduled(abort)
        return sleeper.due

    async def _run(self) -> None:
        # A system task: an exception here would end the Trio run, so nothing in
        # this loop raises (the heap and dicts hold plain values).
        while True:
            due = self._heap[0][0] if self._heap else math.inf
            if due > trio.current_time():
                self._head_moved = await sleep_until_woken(due, self._head_moved)
                continue
            now = trio.current_time()
            while self._heap and self._heap[0][0] <= now:
                key = heapq.heappop(self._heap)[1]
                sleeper = self._parked.pop(key, None)
                if sleeper is not None:
                    if self._stretched:
                        self._stretched.pop(key, None)
                    trio.lowlevel.reschedule(sleeper.task)


async def sleep_on_grid(
    period: float, *, stretch: bool = False, until_activity: bool = False
) -> float:
    """Sleep until the next multiple of ``period`` on the Trio clock (of the idle
    tick when ``stretch`` and the node is idle, until activity with
    ``until_activity``: :meth:`GridTimer.sleep_on_grid`); the time it was due at."""
    return await GridTimer.current().sleep_on_grid(
        period, stretch=stretch, until_activity=until_activity
    )


def note_activity() -> None:
    """Tell this run's grid timer the node is busy (see :meth:`GridTimer.note_activity`)."""
    GridTimer.current().note_activity()
