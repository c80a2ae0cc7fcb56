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
"""

from __future__ import annotations

import heapq
import itertools
from collections import Counter
from collections.abc import Callable
from typing import Any

import trio

from huselet.config.health import HealthSettings
from huselet.dispatch.counters import PoolCounter
from huselet.dispatch.instance import InstanceRecord, InstanceState, stopped_by_signal
from huselet.dispatch.reasons import StopReason
from huselet.log import get_logger
from protocol.link import PING_FRAME

log = get_logger("pool")

LOOP_STALL_S = 0.05  # woke this late: the event loop itself was stalled

# (due, tie-break, record, pinged_at or None for a plain check)
_Entry = tuple[float, int, InstanceRecord, "float | None"]


class Heartbeats:
    def __init__(
        self,
        function: str,
        health: HealthSettings,
        counters: Counter[str],
        spawn: Callable[[Callable[[], Any]], None],
    ) -> None:
        self.function = function
        self.interval = health.heartbeat_interval_ms / 1000
        self.timeout = health.heartbeat_timeout_ms / 1000
        self.counters = counters
        self._spawn = spawn  # starts run() in the pool's nursery
        self._heap: list[_Entry] = []
        self._order = itertools.count()
        self._running = False
        self._wakeup = trio.Event()

    def __len__(self) -> int:
        """Heap entries (watched instances, plus ended ones not yet dropped)."""
        return len(self._heap)

    def watch(self, record: InstanceRecord) -> None:
        """Start judging a ready instance (its link is up)."""
        self._push(record.last_heard + self.interval, record, None)
        if not self._running:
            self._running = True
            self._spawn(self.run)

    def _push(self, due: float, record: InstanceRecord, pinged_at: float | None) -> None:
        earliest = self._heap[0][0] if self._heap else None
        heapq.heappush(self._heap, (due, next(self._order), record, pinged_at))
        if earliest is None or due < earliest:
            self._wakeup.set()  # the task sleeps until the old head: wake it earlier

    async def run(self) -> None:
        try:
            while self._heap:
                due = self._heap[0][0]
                if due > trio.current_time():
                    with trio.move_on_at(due):
                        await self._wakeup.wait()
                    self._wakeup = trio.Event()
                    continue
                now = trio.current_time()
                while self._heap and self._heap[0][0] <= now:
                    due, _, record, pinged_at = heapq.heappop(self._heap)
                    self._check(record, due, pinged_at, now)
                await trio.lowlevel.checkpoint()  # a long batch still lets others run
        finally:
            self._running = False

    def _check(
        self, record: InstanceRecord, due: float, pinged_at: float | None, now: float
    ) -> None:
        link = record.link
        if link is None or record.stop_reason is not None or record.state is InstanceState.STOPPING:
            return  # ended or ending: drop the entry
        if pinged_at is not None:
            self._judge(record, due, pinged_at, now)
            return
        if record.inflight:
            if stopped_by_signal(record.handle):
                self.counters[PoolCounter.STOPPED_BUSY] += 1
                log.warning("busy instance is stopped", function=self.function, instance=record.id)
                record.stop(StopReason.FROZEN)
                return
            self._push(now + self.interval, record, None)
            return
        if now - record.last_heard < self.interval:
            self._push(record.last_heard + self.interval, record, None)
            return
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
        self._push(now + self.timeout, record, now)

    def _judge(self, record: InstanceRecord, due: float, pinged_at: float, now: float) -> None:
        if now - due > LOOP_STALL_S:
            # Our own loop stalled: the answer may sit unread. Judge only on a
            # window the daemon was awake for: ping again.
            self._push(now, record, None)
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
            record.last_heard = now  # busy since the ping: its request's deadline guards it
        if record.inflight:
            self._push(now + self.interval, record, None)
        else:
            self._push(max(now, record.last_heard + self.interval), record, None)
