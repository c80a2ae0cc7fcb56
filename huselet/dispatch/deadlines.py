"""One timer task for every accepted invocation's deadline.

A ``trio.move_on_at`` per request costs a CancelScope (create, enter, exit,
and trio's cancel-status bookkeeping): several µs on every warm request. The
deadlines instead go into one heap, and one task sleeps until the earliest of
them; when it passes, that invocation is expired (the same way the caller's
cancel scope used to: completed with DeadlineExceeded, its instance stopped).

Entries are removed lazily: a finished invocation is dropped from the top of
the heap when its caller says so (:meth:`DeadlineTimer.forget`), and the heap
is rebuilt when finished entries outnumber live ones, so it stays bounded by
the invocations in flight (plus a constant), never by the request rate.

The task is a trio *system* task, started on first use: it lives as long as
the trio run, so no caller can outlive the timer that guards its deadline
(a task in the dispatcher's nursery could be cancelled first at shutdown).
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Callable

import trio

from huselet.dispatch.invocation import Invocation, InvocationState
from huselet.log import get_logger

log = get_logger("dispatch.deadlines")

# Rebuild the heap when this many finished entries sit in it (and they are the majority).
COMPACT_AFTER = 64
DONE = InvocationState.DONE

Expire = Callable[[Invocation, object], None]


class DeadlineTimer:
    """``watch()`` each invocation; ``expire(inv, tag)`` is called once its deadline passed."""

    def __init__(self, expire: Expire) -> None:
        self._expire = expire
        # (deadline, sequence, invocation, tag): the sequence keeps ties off Invocation.
        self._heap: list[tuple[float, int, Invocation, object]] = []
        self._seq = itertools.count()
        self._finished = 0  # entries whose invocation is done, still in the heap
        self._sleep: trio.CancelScope | None = None  # the timer task's sleep, once running
        self._started = False

    def __len__(self) -> int:
        return len(self._heap)

    def watch(self, inv: Invocation, tag: object) -> None:
        """Expire ``inv`` at ``inv.deadline`` unless it is done by then."""
        if not self._started:
            self._started = True
            trio.lowlevel.spawn_system_task(self._run, name="huselet deadline timer")
        heap = self._heap
        heapq.heappush(heap, (inv.deadline, next(self._seq), inv, tag))
        sleep = self._sleep
        # Only a new earliest deadline moves the timer (rare: budgets are mostly equal).
        if sleep is not None and heap[0][2] is inv and inv.deadline < sleep.deadline:
            sleep.deadline = inv.deadline

    def forget(self) -> None:
        """A watched invocation finished: drop what is finished from the heap."""
        heap = self._heap
        self._finished += 1
        # The state itself, not Invocation.done: a call saved on every request.
        while heap and heap[0][2].state is DONE:
            heapq.heappop(heap)
            self._finished -= 1
        if self._finished > COMPACT_AFTER and self._finished * 2 > len(heap):
            self._heap = [entry for entry in heap if not entry[2].done]
            heapq.heapify(self._heap)
            self._finished = 0
        self._finished = max(self._finished, 0)

    def expire_due(self, now: float) -> None:
        """Expire every invocation whose deadline is ``now`` or earlier."""
        heap = self._heap
        while heap and heap[0][0] <= now:
            _, _, inv, tag = heapq.heappop(heap)
            if inv.done:
                self._finished = max(self._finished - 1, 0)
                continue
            try:
                self._expire(inv, tag)
            except Exception:
                # A system task's exception would end the whole trio run: log it.
                # expire() completes the invocation first, so its caller is answered.
                log.exception("expiring an invocation failed", request_id=inv.request_id)

    async def _run(self) -> None:
        while True:
            self.expire_due(trio.current_time())
            with trio.CancelScope() as sleep:
                sleep.deadline = self._heap[0][0] if self._heap else math.inf
                self._sleep = sleep
                await trio.sleep_forever()
            self._sleep = None
