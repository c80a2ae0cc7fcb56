"""RequestBuffer: the bounded, per-function queue between ingress and instances.

Instances *pull*: an instance with credit to spare registers a *taker*
(:meth:`RequestBuffer.add_taker`), and :meth:`RequestBuffer.put` hands a new
request straight to the taker that registered last (the instance that became
idle last: :mod:`huselet.dispatch.idlestack` says why), which writes it to its instance
there and then: no task wakes up between a request's arrival and its frame on
the link. (:meth:`RequestBuffer.get` remains for whoever waits in a task.)
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
from collections.abc import Callable

import trio

from huselet.dispatch.idlestack import IdleStack
from huselet.dispatch.invocation import Invocation, InvocationState
from huselet.errors import DeadlineExceeded, HuseletError, QueueFull


class RequestBuffer:
    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._queue: deque[Invocation] = deque()
        self._live = 0  # entries of _queue still QUEUED (the rest are done, skipped lazily)
        # LIFO, as the takers: the task that parked last is woken first.
        self._getters = IdleStack()
        # Instances ready to take a request now (a dict: O(1) add, remove and
        # pop-newest): key -> the call that takes one from this queue. The one
        # that registered last takes the next request (see _hand_over).
        self._takers: dict[object, Callable[[], object]] = {}

    def __len__(self) -> int:
        """Queued entries, including done ones not yet skipped (an upper bound)."""
        return len(self._queue)

    @property
    def idle_getters(self) -> int:
        """Dispatchers parked waiting for work: instances ready to take a request now."""
        return len(self._getters) + len(self._takers)

    def add_taker(self, key: object, take: Callable[[], object]) -> None:
        """``take()`` will be called (once, then forgotten) when a request arrives.

        ``take`` runs in the caller of :meth:`put` (or :meth:`requeue`): it
        must not block, and takes the request with :meth:`get_nowait`.
        """
        self._takers.pop(key, None)  # re-registering makes it the newest
        self._takers[key] = take

    def remove_taker(self, key: object) -> None:
        self._takers.pop(key, None)

    def _hand_over(self) -> None:
        # Each turn takes a request, drops a taker, or (the queue empty) ends:
        # a taker re-registers only after taking, or when nothing is left.
        takers = self._takers
        while takers and self._live:
            # LIFO: the instance that became idle last (warm caches; the
            # others stay idle and can idle out). FIFO made a trickle of
            # requests round-robin over every idle instance: with 2,000 idle,
            # each request met a process long out of the CPU caches.
            _, take = takers.popitem()
            take()

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
        self._wake()

    def requeue(self, inv: Invocation) -> None:
        """Put an accepted invocation back at the head (a retry): it was already
        admitted once, so the bound does not refuse it."""
        inv.state = InvocationState.QUEUED
        inv.instance = None
        self._queue.appendleft(inv)
        self._enqueued(inv)
        self._wake()

    def _wake(self) -> None:
        if self._takers:
            self._hand_over()
        if self._live:
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

    def fail_expiring(self, cutoff: float, error: HuseletError) -> int:
        """Complete every queued invocation whose deadline is at or before ``cutoff``
        with ``error``; return how many. O(queue): for a failed start, not per request."""
        failed = 0
        for inv in self._queue:
            if (
                inv.state is InvocationState.QUEUED
                and inv.deadline <= cutoff
                and inv.complete(error)
            ):
                failed += 1
        return failed

    def fail_all(self, error: HuseletError) -> int:
        """Complete every queued invocation with ``error``; return how many."""
        failed = 0
        while self._queue:
            if self._queue.popleft().complete(error):
                failed += 1
        return failed
