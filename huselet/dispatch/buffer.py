"""RequestBuffer: the bounded, per-function queue between ingress and instances.

Instances *pull*: each instance's dispatcher awaits :meth:`RequestBuffer.get`.
Invocations that are already done (their caller's deadline passed, or the node
is draining) are skipped on the way out, so a request that timed out while
queued is never delivered afterwards.

Nothing here walks the queue per request: the number of live (QUEUED)
entries is kept as a counter — every way out of the QUEUED state passes
through :meth:`RequestBuffer.get_nowait` or :meth:`Invocation.complete`
(which calls :meth:`RequestBuffer.left_queue`) — so the scaling decision on
every submit costs the same with ten requests queued or ten thousand.
"""

from __future__ import annotations

from collections import deque

import trio

from huselet.dispatch.idlestack import IdleStack
from huselet.dispatch.invocation import Invocation, InvocationState
from huselet.errors import DeadlineExceeded, HuseletError, QueueFull


class RequestBuffer:
    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._queue: deque[Invocation] = deque()
        self._live = 0  # entries of _queue still QUEUED (the rest are done, skipped lazily)
        # LIFO: the instance that became idle last takes the next request (warm caches).
        self._getters = IdleStack()

    def __len__(self) -> int:
        """Queued entries, including done ones not yet skipped (an upper bound)."""
        return len(self._queue)

    @property
    def idle_getters(self) -> int:
        """Dispatchers parked waiting for work: instances ready to take a request now."""
        return len(self._getters)

    def live_count(self) -> int:
        """Requests waiting for an instance (done ones excluded); O(1)."""
        return self._live

    def left_queue(self, inv: Invocation) -> None:
        """``inv`` stops being QUEUED while still in the queue (completed from outside)."""
        if inv.queued_in is self:
            inv.queued_in = None
            self._live -= 1

    def _enqueued(self, inv: Invocation) -> None:
        if inv.queued_in is not None:  # already counted (queued twice): count it once
            inv.queued_in.left_queue(inv)
        inv.queued_in = self
        self._live += 1

    def put(self, inv: Invocation) -> None:
        if len(self._queue) >= self.capacity:
            self._purge_done()
            if len(self._queue) >= self.capacity:
                raise QueueFull(
                    f"function {inv.function!r} has {self.capacity} requests queued; "
                    "try again later",
                    retry_after_s=1,
                )
        self._queue.append(inv)
        self._enqueued(inv)
        self._getters.unpark()

    def requeue(self, inv: Invocation) -> None:
        """Put an accepted invocation back at the head (a retry): it was already
        admitted once, so the bound does not refuse it."""
        inv.state = InvocationState.QUEUED
        inv.instance = None
        self._queue.appendleft(inv)
        self._enqueued(inv)
        self._getters.unpark()

    def _purge_done(self) -> None:
        self._queue = deque(inv for inv in self._queue if inv.state is InvocationState.QUEUED)

    def get_nowait(self) -> Invocation | None:
        """Pop the oldest live invocation, marked DISPATCHED, or None."""
        now = trio.current_time()
        queue = self._queue
        while queue:
            inv = queue.popleft()
            if inv.state is not InvocationState.QUEUED:
                continue
            self.left_queue(inv)
            if inv.deadline <= now:
                inv.complete(
                    DeadlineExceeded(f"request waited {now - inv.enqueued_at:.3f}s in the queue")
                )
                continue
            inv.state = InvocationState.DISPATCHED
            inv.dispatched_at = now
            return inv
        return None

    async def get(self) -> Invocation:
        """Wait for and return the next live invocation (marked DISPATCHED)."""
        parked = False
        while True:
            inv = self.get_nowait()
            if inv is not None:
                if not parked:  # parking was the checkpoint; a second yield costs a loop turn
                    await trio.lowlevel.cancel_shielded_checkpoint()
                return inv
            await self._getters.park()
            parked = True

    def fail_all(self, error: HuseletError) -> int:
        """Complete every queued invocation with ``error``; return how many."""
        failed = 0
        while self._queue:
            if self._queue.popleft().complete(error):
                failed += 1
        return failed
