"""The instances' memory, measured a bounded slice at a time, with no per-tick walk.

Reading ``/proc/PID/smaps_rollup`` walks the process's page tables: tens to
hundreds of µs per instance. The memory loop measured every instance every
second, so an idle node with thousands of instances spent a good part of a
core on it (issue 12). :class:`RollingMemorySampler` keeps each instance's
last size and, per tick, measures new instances first (an instance that just
started is what changes the total), in one worker-thread trip bounded by a
time budget (``budget_s``) and a count (``per_call``), then a few
(``refresh_per_call`` per tick) of the ones measured longest ago — those only
every ``refresh_every`` ticks or along with new ones, so an idle node's
memory tick is one ``MemAvailable`` read on the loop's thread nine times in ten. Instances not
measured yet count as the mean of those that are, so a burst of starts shows
in the total at once, and the sample says how many wait (``pending``): the
memory loop then ticks every 200 ms until they are measured, so 2,000 new
instances (~0.2 ms of CPU a read) are measured within seconds (16 a tick took
two minutes, and kept an idle node busy that long). The host's
``MemAvailable`` (one cheap read) is taken on every tick: it is the signal
that reacts within one interval whatever the node's size. A tick with nothing
to read (no instance) reads it on the loop's thread: no worker-thread trip.

Nothing per tick depends on the number of instances either: the sampler is
a :class:`~huselet.dispatch.livepids.PidListener` of the dispatcher's live
pids, told of each start and end as it happens (O(1) each; an ended
instance leaves the total at once), instead of being handed — and diffing —
a list of every pid every second. The bookkeeping runs on the event loop's
thread; only the ``/proc`` reads of one slice go to a worker thread
(:meth:`RollingMemorySampler.sample`).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Sequence

import trio

from huselet.health.pressure import MemorySample, host_memory, process_memory_bytes

# smaps_rollup reads per worker-thread trip at most. New instances are each read
# once whatever the batching (the reads are the cost, ~0.2 ms of CPU each); a
# batch bounded by READ_BUDGET_S instead of 16 a tick gets a burst of 2,000
# measured in a few seconds instead of two minutes, without a long trip.
PER_CALL = 1024
# Wall time one trip spends reading at most (it reads at least one pid): the
# worker thread is off the event loop, but the loop waits for its answer.
READ_BUDGET_S = 0.02
# Of those, at most this many re-measure instances measured before: an idle
# instance's size hardly moves, and each smaps_rollup read cost ~0.5 ms of the
# idle daemon's CPU here (16 a second were ~0.9 % of a core, the largest part
# of an idle node's cost after the per-tick walks went). 2,000 instances are
# refreshed every ~8 minutes; new ones are still measured 16 a tick.
REFRESH_PER_CALL = 4
# Refreshes are read in one trip every this many ticks (REFRESH_PER_CALL for each
# tick since the last trip: the same reads per second), or with the next trip that
# reads new instances. A trip is two extra event-loop wake-ups (the worker thread's
# answer, then the loop's task) on top of the tick: every second, that was the
# largest periodic cost of an idle node with instances left (issue 12); the other
# ticks read MemAvailable on the loop's thread.
REFRESH_EVERY = 10
# Stale queue entries (ended or re-measured instances) are dropped lazily; a
# queue is compacted once it holds this many more entries than it needs.
COMPACT_SLACK = 64


class RollingMemorySampler:
    """Follows the live pids (``added``/``removed``) and measures a slice per tick."""

    def __init__(
        self,
        per_call: int = PER_CALL,
        *,
        refresh_per_call: int = REFRESH_PER_CALL,
        refresh_every: int = REFRESH_EVERY,
        budget_s: float | None = READ_BUDGET_S,
        read: Callable[[int], int | None] = process_memory_bytes,
        available: Callable[[], int] = lambda: host_memory()[1],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if per_call < 1:
            raise ValueError(f"per_call must be at least 1, got {per_call}")
        if budget_s is not None and not budget_s > 0:
            raise ValueError(f"budget_s must be positive (or None: no bound), got {budget_s}")
        self.per_call = per_call
        if refresh_every < 1:
            raise ValueError(f"refresh_every must be at least 1, got {refresh_every}")
        self.refresh_per_call = max(1, min(refresh_per_call, per_call))
        self.refresh_every = refresh_every
        self._ticks_unrefreshed = 0  # ticks since the last one that refreshed
        self.budget_s = budget_s
        self._clock = clock
        self._read = read
        self._available = available
        self._live: set[int] = set()
        # Live and measured: pid -> (bytes, stamp of that measurement).
        self._sizes: dict[int, tuple[int, int]] = {}
        self._total = 0  # sum of the bytes in _sizes
        self._stamp = 0
        self._new: deque[int] = deque()  # live, not measured yet (may hold stale entries)
        # Live pids whose last read failed: retried, but not "pending" (which makes the
        # loop tick fast), or one unreadable process would keep it at 5 Hz for good.
        self._unreadable: set[int] = set()
        self._order: deque[tuple[int, int]] = deque()  # (pid, stamp), least recently measured first

    # --- PidListener: the dispatcher's live pids (event loop thread, O(1)) ----------

    def added(self, pid: int) -> None:
        self.removed(pid)  # a reused pid is a new process: its old size is void
        self._live.add(pid)
        self._new.append(pid)
        if len(self._new) > 2 * len(self._live) + COMPACT_SLACK:
            self._new = deque(p for p in dict.fromkeys(self._new) if self._unmeasured(p))

    def removed(self, pid: int) -> None:
        self._live.discard(pid)
        self._unreadable.discard(pid)
        entry = self._sizes.pop(pid, None)
        if entry is not None:
            self._total -= entry[0]

    def _unmeasured(self, pid: int) -> bool:
        return pid in self._live and pid not in self._sizes

    # --- one tick ---------------------------------------------------------------------

    def due(self) -> list[int]:
        """The pids to measure now: at most ``per_call``, new ones first, then, on a
        tick that reads anyway or every ``refresh_every`` ticks, ``refresh_per_call``
        per tick since the last refresh of the ones measured longest ago."""
        batch: dict[int, None] = {}  # ordered, and O(1) membership for a batch of 1,024
        while self._new and len(batch) < self.per_call:
            pid = self._new.popleft()
            if self._unmeasured(pid):
                batch[pid] = None
        self._ticks_unrefreshed += 1
        if not batch and self._ticks_unrefreshed < self.refresh_every:
            return []  # no trip this tick: the refreshes wait for the batch
        refresh = self.refresh_per_call * self._ticks_unrefreshed
        self._ticks_unrefreshed = 0
        limit = min(self.per_call, len(batch) + refresh)
        while self._order and len(batch) < limit:
            pid, stamp = self._order.popleft()
            entry = self._sizes.get(pid)
            if entry is not None and entry[1] == stamp and pid not in batch:
                batch[pid] = None
        return list(batch)

    def read(self, pids: Sequence[int]) -> tuple[list[int | None], int]:
        """The blocking part (any thread): the sizes of a prefix of ``pids`` read within
        ``budget_s`` (at least one), and the host's MemAvailable."""
        sizes: list[int | None] = []
        until = None if self.budget_s is None else self._clock() + self.budget_s
        for pid in pids:
            sizes.append(self._read(pid))
            if until is not None and self._clock() >= until:
                break
        return sizes, self._available()

    def record(
        self, pids: Sequence[int], sizes: Sequence[int | None], available: int
    ) -> MemorySample:
        """Take the sizes of ``due()``'s pids in (a prefix of them: the rest, not
        read within the budget, keep their place); the node's estimated total."""
        if len(sizes) > len(pids):
            raise ValueError(f"{len(sizes)} sizes for {len(pids)} pids")
        self._requeue(pids[len(sizes) :])
        for pid, size in zip(pids, sizes, strict=False):
            if pid not in self._live:
                continue  # ended while it was being read
            self.removed(pid)
            self._live.add(pid)
            if size is None:
                # Gone (its teardown will say so) or unreadable: try again after the others.
                self._new.append(pid)
                self._unreadable.add(pid)
                continue
            self._stamp += 1
            self._sizes[pid] = (size, self._stamp)
            self._total += size
            self._order.append((pid, self._stamp))
        if len(self._order) > 2 * len(self._sizes) + COMPACT_SLACK:
            self._order = deque(
                (p, s) for p, s in self._order if self._sizes.get(p, (0, -1))[1] == s
            )
        measured = len(self._sizes)
        unmeasured = len(self._live) - measured
        mean = self._total // measured if measured else 0
        pending = unmeasured - len(self._unreadable)
        return MemorySample(self._total + mean * unmeasured, measured, available, pending)

    def _requeue(self, unread: Sequence[int]) -> None:
        """Put pids ``due()`` handed out but the budget left unread back at the front."""
        new, old = [], []
        for pid in unread:
            entry = self._sizes.get(pid)
            if entry is not None:
                old.append((pid, entry[1]))
            elif pid in self._live:
                new.append(pid)
        self._new.extendleft(reversed(new))
        self._order.extendleft(reversed(old))

    def measure_now(self) -> MemorySample:
        """One tick on the calling thread (tests, tools)."""
        pids = self.due()
        return self.record(pids, *self.read(pids))

    async def sample(self) -> MemorySample:
        """One tick: the slice is read in a worker thread, the bookkeeping stays here."""
        pids = self.due()
        if not pids:
            # Nothing to measure: MemAvailable is one cheap read, not worth a thread trip.
            return self.record(pids, [], self._available())
        sizes, available = await trio.to_thread.run_sync(self.read, pids)
        return self.record(pids, sizes, available)
