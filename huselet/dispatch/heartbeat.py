"""Heartbeats of one pool's instances: one task walking a due-heap, not a timer per instance.

Only idle instances are pinged: a busy one may legitimately be silent for its
whole handler run, and its request's deadline guards it. A stopped (SIGSTOP)
or wedged idle worker would otherwise take the next request and hold it until
that request's deadline. What is judged, per instance:

- idle and silent for ``heartbeat_interval_ms``: a PING is written (without
  blocking: a worker whose link buffer is full is not reading it and is
  replaced at once); no frame back within ``heartbeat_timeout_ms`` and still
  idle: replaced ("missed heartbeat");
- busy: every interval, its process state is read; SIGSTOPped or held by a
  tracer mid-request, it cannot finish, and answering now beats waiting out
  the deadline ("frozen by SIGSTOP or a tracer").

Why one task per pool: with thousands of idle instances, a task and two
timers each (sleep until due, sleep until the answer is due) woke the event
loop thousands of times per interval. Here each instance is one heap entry;
the task wakes once per batch of entries that fall due together, writes the
batch's PINGs, and judges them together a timeout later. Entries of
instances that ended are dropped when they come due (no removal walk). The
task exits when no instance is watched and restarts with the next one.

Instances the kernel watches (direct children of the daemon: ``fork`` and
``process``; see :mod:`huselet.dispatch.childstops`) are not pinged every
interval: their exit is seen through the pidfd and link EOF, and a stop
(SIGSTOP, busy or idle) arrives as SIGCHLD. A stopped idle one is pinged at
once and judged as above ("missed heartbeat"); a stopped busy one is stopped
("frozen"). They keep one heap entry only every
``idle_heartbeat_interval_ms`` (default 5 minutes; 0: none), for a worker
wedged without being stopped — so 2,000 idle instances cost the daemon a
handful of wake-ups a second, not a thousand. Due times are rounded up onto
:mod:`huselet.timegrid` (a 300 s check to the whole minute, a 1 s answer
timeout to 0.2 s): entries due within one grid step are one wake-up, shared
with the health loops' ticks — the idle checks of thousands of instances
started over a few seconds are one round of pings, not one per second.
"""

from __future__ import annotations

import heapq
import itertools
import weakref
from collections import Counter
from collections.abc import Callable
from typing import Any

import trio

from huselet.config.health import HealthSettings
from huselet.dispatch.childstops import WORKER_IS_CHILD, child_stops
from huselet.dispatch.counters import PoolCounter
from huselet.dispatch.instance import InstanceRecord, InstanceState, stopped_by_signal
from huselet.dispatch.reasons import StopReason
from huselet.log import get_logger
from huselet.timegrid import coarsest_grid, round_up_to_grid, sleep_until_woken
from protocol.link import PING_FRAME

log = get_logger("pool")

LOOP_STALL_S = 0.05  # woke this late: the event loop itself was stalled

# (due, tie-break, record, pinged_at or None for a plain check, chained): an
# entry is chained when it is the record's periodic one (it schedules the
# next); a ping prompted by a stop (SIGCHLD) is judged without rescheduling,
# so events never multiply a record's entries.
_Entry = tuple[float, int, InstanceRecord, "float | None", bool]


class Heartbeats:
    def __init__(
        self,
        function: str,
        health: HealthSettings,
        counters: Counter[str],
        spawn: Callable[[Callable[[], Any]], None],
        runtime: str = "",
    ) -> None:
        self.function = function
        self.kernel_can_watch = runtime in WORKER_IS_CHILD
        self.interval = health.heartbeat_interval_ms / 1000
        self.timeout = health.heartbeat_timeout_ms / 1000
        # For kernel-watched instances; None: no timer at all.
        self.idle_interval = health.idle_heartbeat_interval_ms / 1000 or None
        self.counters = counters
        self._spawn = spawn  # starts run() in the pool's nursery
        self._heap: list[_Entry] = []
        self._order = itertools.count()
        self._running = False
        self._wakeup = trio.Event()
        # Instances whose stops and exits the kernel reports (weakly held: an
        # ended one drops out by itself).
        self._kernel: weakref.WeakSet[InstanceRecord] = weakref.WeakSet()

    def __len__(self) -> int:
        """Heap entries (watched instances, plus ended ones not yet dropped)."""
        return len(self._heap)

    def watch(self, record: InstanceRecord) -> None:
        """Start judging a ready instance (its link is up)."""
        pid = record.handle.pid if record.handle is not None else None
        if (
            self.kernel_can_watch
            and pid is not None
            and child_stops().watch(pid, record, self.stopped)
        ):
            self._kernel.add(record)
            self.counters[PoolCounter.HEARTBEAT_KERNEL_WATCHED] += 1
        self._reschedule(record, record.last_heard)

    def kernel_watched(self, record: InstanceRecord) -> bool:
        return record in self._kernel

    def _period(self, record: InstanceRecord) -> float | None:
        return self.idle_interval if record in self._kernel else self.interval

    def _reschedule(self, record: InstanceRecord, since: float) -> None:
        """The next plain check of ``record``, ``since`` plus its period (if it has one)."""
        period = self._period(record)
        if period is not None:
            self._push(since + period, record, None)

    def stopped(self, record: InstanceRecord) -> None:
        """The kernel says the instance's process stopped (SIGCHLD, ``waitid``)."""
        if record.link is None or record.stop_reason is not None:
            return
        if record.state is InstanceState.STOPPING:
            return
        if record.inflight:
            self._stop_if_frozen(record)
            return
        # Idle: ping it now and judge it a timeout later, exactly as if its
        # interval had come (it may have been continued meanwhile and answer).
        self._ping(record, trio.current_time(), chained=False)

    def _push(
        self, due: float, record: InstanceRecord, pinged_at: float | None, chained: bool = True
    ) -> None:
        # Rounded up onto the shared time grid (by at most a quarter of the wait): the
        # entries of instances started over a few seconds fall due together, and with
        # the health loops' ticks, instead of one wake-up of the loop each.
        grid = coarsest_grid(due - trio.current_time())
        if grid is not None:
            due = round_up_to_grid(due, grid)
        earliest = self._heap[0][0] if self._heap else None
        heapq.heappush(self._heap, (due, next(self._order), record, pinged_at, chained))
        if not self._running:
            self._running = True
            self._spawn(self.run)
        elif earliest is None or due < earliest:
            self._wakeup.set()  # the task sleeps until the old head: wake it earlier

    async def run(self) -> None:
        try:
            while self._heap:
                due = self._heap[0][0]
                if due > trio.current_time():
                    self._wakeup = await sleep_until_woken(due, self._wakeup)
                    continue
                now = trio.current_time()
                while self._heap and self._heap[0][0] <= now:
                    due, _, record, pinged_at, chained = heapq.heappop(self._heap)
                    if pinged_at is None:
                        self._check(record, now)
                    else:
                        self._judge(record, due, pinged_at, now, chained)
                await trio.lowlevel.checkpoint()  # a long batch still lets others run
        finally:
            self._running = False

    @staticmethod
    def _ended(record: InstanceRecord) -> bool:
        return (
            record.link is None
            or record.stop_reason is not None
            or record.state is InstanceState.STOPPING
        )

    def _check(self, record: InstanceRecord, now: float) -> None:
        if self._ended(record):
            return  # drop the entry
        if record.inflight:
            if not self._stop_if_frozen(record):
                self._reschedule(record, now)
            return
        period = self._period(record)
        if period is not None and now - record.last_heard < period:
            self._push(record.last_heard + period, record, None)
            return
        self._ping(record, now, chained=True)

    def _stop_if_frozen(self, record: InstanceRecord) -> bool:
        if not stopped_by_signal(record.handle):
            return False
        self.counters[PoolCounter.STOPPED_BUSY] += 1
        log.warning("busy instance is stopped", function=self.function, instance=record.id)
        record.stop(StopReason.FROZEN)
        return True

    def _ping(self, record: InstanceRecord, now: float, *, chained: bool) -> None:
        link = record.link
        assert link is not None
        try:
            written = link.send_nowait(PING_FRAME)
        except OSError as exc:
            record.stop(StopReason.LINK_BROKE, exc)
            return
        if not written:
            # Its link buffer is full (part of a frame may even be on the wire):
            # it has not been reading, and the link cannot be trusted.
            self.counters[PoolCounter.HEARTBEAT_MISSED] += 1
            record.stop(StopReason.NOT_READING)
            return
        self.counters[PoolCounter.HEARTBEAT_PINGS] += 1
        self._push(now + self.timeout, record, now, chained)

    def _judge(
        self, record: InstanceRecord, due: float, pinged_at: float, now: float, chained: bool
    ) -> None:
        if self._ended(record):
            return
        if now - due > LOOP_STALL_S:
            # Our own loop stalled: the answer may sit unread. Judge only on a
            # window the daemon was awake for: ping again (idle only: a busy
            # link is written by its request's task).
            if not record.inflight:
                self._ping(record, now, chained=chained)
            elif chained:
                self._reschedule(record, now)
            return
        if record.last_heard < pinged_at:
            if not record.inflight:
                self.counters[PoolCounter.HEARTBEAT_MISSED] += 1
                log.warning(
                    "instance missed its heartbeat",
                    function=self.function,
                    instance=record.id,
                    silent_s=round(now - record.last_heard, 3),
                )
                record.stop(StopReason.MISSED_HEARTBEAT)
                return
            if self._stop_if_frozen(record):
                return  # took a request while stopped (a kernel-reported stop's ping)
            record.last_heard = now  # busy since the ping: its request's deadline guards it
        if chained:
            self._reschedule(record, now if record.inflight else max(now, record.last_heard))
