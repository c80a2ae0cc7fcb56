"""One lazy timer for the idle, read and send deadlines of every HTTP connection.

A keep-alive connection moves its deadline three times per request (the idle
wait, the first byte's read timeout, none while the handler runs). Moving a
trio cancel scope's deadline costs ~1.4 µs each (a heap push, later a
prune): ~6 µs per request, profiled under load (issue 12). Here a deadline is
an attribute (:attr:`Timed.due`) and the timer is told only when a deadline
moves *earlier* than the time it will next look at that connection; a later
one is found when that time comes, and re-armed then. In a steady keep-alive
exchange that is no timer work per request at all.

Nothing is cut by mistake: when the timer looks at a connection it cancels
it only if :attr:`Timed.due` has passed *then*; while a handler runs the
connection's due is infinite, so a handler's wait is never cancelled by an
idle or read deadline set before it. Entries left by earlier, superseded
deadlines (or by closed connections) are skipped when they come up, and the
heap is compacted when they outnumber the live ones, so it stays bounded by
the open connections.
"""

from __future__ import annotations

import heapq
import itertools
import math
from typing import Protocol

import trio

# Compact the heap when it holds more than this many entries per registered connection.
STALE_FACTOR = 4
MIN_COMPACT = 64


class Timed(Protocol):
    """A connection as the timer sees it."""

    due: float  # when it must be cancelled (math.inf: never, e.g. its handler runs)
    timer_at: float  # when the timer looks at it next (math.inf: not registered)

    def expire(self) -> None:
        """Its deadline passed: cancel what it is doing (it closes)."""


class ConnectionTimer:
    """``run()`` it in a nursery; connections call :meth:`set_due` and :meth:`forget`."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Timed]] = []
        self._seq = itertools.count()  # ties: never compare two connections
        self._next = math.inf  # when run() wakes up next
        self._sleep: trio.CancelScope | None = None
        self.registered = 0  # connections with an entry due (timer_at finite)

    def set_due(self, conn: Timed, due: float) -> None:
        """``conn`` must be expired at ``due`` (unless it moves its due again before)."""
        conn.due = due
        if due < conn.timer_at:
            self._arm(conn, due)

    def forget(self, conn: Timed) -> None:
        """``conn`` closed: its entries are stale from now on."""
        conn.due = math.inf
        if conn.timer_at != math.inf:
            conn.timer_at = math.inf
            self.registered -= 1

    def _arm(self, conn: Timed, at: float) -> None:
        if conn.timer_at == math.inf:
            self.registered += 1
        conn.timer_at = at
        heap = self._heap
        if len(heap) >= MIN_COMPACT and len(heap) > STALE_FACTOR * self.registered:
            heap[:] = [entry for entry in heap if entry[2].timer_at == entry[0]]
            heapq.heapify(heap)
        heapq.heappush(heap, (at, next(self._seq), conn))
        if at < self._next:
            self._next = at
            if self._sleep is not None:
                self._sleep.deadline = at

    async def run(self) -> None:
        while True:
            with trio.CancelScope(deadline=self._next) as self._sleep:
                await trio.sleep_forever()
            self._sleep = None
            self.fire(trio.current_time())

    def fire(self, now: float) -> None:
        """Expire the connections whose due has passed; look again later at the others."""
        heap = self._heap
        self._next = math.inf
        while heap and heap[0][0] <= now:
            at, _, conn = heapq.heappop(heap)
            if conn.timer_at != at:
                continue  # superseded by an earlier entry, or the connection closed
            conn.timer_at = math.inf
            self.registered -= 1
            due = conn.due
            if due <= now:
                conn.expire()
            elif due != math.inf:
                self._arm(conn, due)  # moved later meanwhile: look again then
            # else: its handler runs; its next finite due arms the timer again.
        self._next = heap[0][0] if heap else math.inf
