"""RequestBuffer: the bounded, per-function queue between ingress and instances.

Instances *pull*: an instance with credit to spare registers a *taker*
(:meth:`RequestBuffer.add_taker`), and :meth:`RequestBuffer.put` hands a new
request straight to the taker that registered last (the instance that became
idle last: :mod:`huselet.dispatch.idlestack` says why), which writes it to its instance
there and then: no task wakes up between a request's arrival and its frame on
the link. (:meth:`RequestBuffer.get` remains for whoever waits in a task.)
A front end that submits several requests at once (the framed ingress, the
calls of one read) opens a :class:`HandOvers` batch: the takers are then
called at its end, each taking an equal share in one write.
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


class HandOvers:
    """Hand-overs to idle instances put off while a front end admits a batch of requests.

    The framed ingress admits every call one read brought before it reads
    again. Handed over as each arrives, each call cost a write to an idle
    instance of its own, and the calls that found no idle instance went out
    later, when results came in. Inside ``with hand_overs:`` a buffer with
    takers only notes that it has work; at the end of the outermost ``with``
    each such buffer hands over its queue at once, an equal share to each idle
    instance (:attr:`RequestBuffer.share`): none waits behind another while
    one is idle, and each takes its share in one write. (More than one each
    only when there are more requests than idle instances, and only while the
    pool cannot grow: :func:`~huselet.dispatch.serving._may_queue_behind`.)
    Nothing waits in between: the batch is one synchronous run of the loop.
    """

    # RequestBuffer._wake reads _depth and fills _pending itself (no call per request).
    __slots__ = ("_depth", "_pending")

    def __init__(self) -> None:
        self._depth = 0
        self._pending: dict[RequestBuffer, None] = {}  # insertion order: the order of arrival

    @property
    def holding(self) -> bool:
        """Inside a batch: hand-overs are put off until its end. (For observers and
        tests; the hot path reads ``_depth`` itself.)"""
        return self._depth > 0

    def __enter__(self) -> None:
        self._depth += 1

    def __exit__(self, *exc_info: object) -> None:
        self._depth -= 1
        if self._depth == 0:
            # Even when the batch ended in an error: no accepted request is left
            # queued while an instance idles.
            pending = self._pending
            while pending:
                buffer = next(iter(pending))
                del pending[buffer]
                buffer.hand_over()
                if buffer.live_count() and buffer.after_batch is not None:
                    # Requests left queued: while they were put, the idle instances'
                    # credit still counted as spare capacity, so the pool's scaling
                    # must look again now that it is spent.
                    buffer.after_batch()


class RequestBuffer:
    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        # The node's batching of hand-overs (the dispatcher sets it); None: none.
        self.hand_overs: HandOvers | None = None
        # While handing over: the most one taker should take now (its equal share
        # of the live requests); 0 otherwise (a taker takes what it may).
        self.share = 0
        # Called after a batch's hand-over left requests queued (the pool's scaling).
        self.after_batch: Callable[[], object] | None = None
        self._queue: deque[Invocation] = deque()
        self._live = 0  # entries of _queue still QUEUED (the rest are done, skipped lazily)
        # LIFO, as the takers: the task that parked last is woken first.
        self._getters = IdleStack()
        # Instances ready to take a request now (a dict: O(1) add, remove and
        # pop-newest): key -> the call that takes one from this queue. The one
        # that registered last takes the next request (see hand_over).
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

    def hand_over(self) -> None:
        """Give queued requests to the takers, an equal share each (see :class:`HandOvers`)."""
        # Each turn takes a request, drops a taker, or (the queue empty) ends:
        # a taker re-registers only after taking, or when nothing is left.
        takers = self._takers
        try:
            while takers and self._live:
                self.share = -(-self._live // len(takers))  # ceil: the last ones take the rest
                # LIFO: the instance that became idle last (warm caches; the
                # others stay idle and can idle out). FIFO made a trickle of
                # requests round-robin over every idle instance: with 2,000 idle,
                # each request met a process long out of the CPU caches.
                _, take = takers.popitem()
                take()
        finally:
            self.share = 0

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
        # Every request comes here: attribute tests, not calls, for the common cases
        # (no batch open or one open, and no getter parked).
        if self._takers:
            batch = self.hand_overs
            if batch is not None and batch._depth > 0:
                batch._pending[self] = None  # handed over at the end of the batch
            else:
                self.hand_over()
        if self._live and self._getters.parked:
            self._getters.unpark()

    def _purge_done(self) -> None:
        self._queue = deque(inv for inv in self._queue if inv.state is InvocationState.QUEUED)

    def get_nowait(self, now: float | None = None) -> Invocation | None:
        """Pop the oldest live invocation, marked DISPATCHED, or None.

        ``now``: the caller's clock reading (one for the requests it takes in a row).
        """
        if now is None:
            now = trio.current_time()
        queue = self._queue
        while queue:
            inv = queue.popleft()
            if inv.state is not InvocationState.QUEUED:
                continue
            if inv.queued_in is self:  # left_queue(), inline: once per request
                inv.queued_in = None
                self._live -= 1
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
