"""The instances' memory, measured a bounded slice at a time, with no per-tick walk.

Reading ``/proc/PID/smaps_rollup`` walks the process's page tables: tens to
hundreds of µs per instance. The memory loop measured every instance every
second, so an idle node with thousands of instances spent a good part of a
core on it (issue 12). :class:`RollingMemorySampler` keeps each instance's
last size and, per tick, measures at most ``per_call`` instances: new ones
first (an instance that just started is what changes the total), then the
ones measured longest ago. Instances not measured yet count as the mean of
those that are, so a burst of starts shows in the total at once. The host's
``MemAvailable`` (one cheap read) is taken on every tick: it is the signal
that reacts within one interval whatever the node's size.

Nothing per tick depends on the number of instances either: the sampler is
a :class:`~huselet.dispatch.livepids.PidListener` of the dispatcher's live
pids, told of each start and end as it happens (O(1) each; an ended
instance leaves the total at once), instead of being handed — and diffing —
a list of every pid every second. The bookkeeping runs on the event loop's
thread; only the ``/proc`` reads of one slice go to a worker thread
(:meth:`RollingMemorySampler.sample`).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence

import trio

from huselet.health.pressure import MemorySample, host_memory, process_memory_bytes

# smaps_rollup reads per memory-loop tick, whatever the node's size. 128 a tick
# were still the largest idle cost of a node with 2,000 idle instances (perf:
# ~40 % of the daemon's idle CPU in smaps_account); 16 refresh all 2,000 every
# ~2 minutes, while new instances are measured at once and MemAvailable (what
# reacts within one interval) is read on every tick.
PER_CALL = 16
# Of those, at most this many re-measure instances measured before: an idle
# instance's size hardly moves, and each smaps_rollup read cost ~0.5 ms of the
# idle daemon's CPU here (16 a second were ~0.9 % of a core, the largest part
# of an idle node's cost after the per-tick walks went). 2,000 instances are
# refreshed every ~8 minutes; new ones are still measured 16 a tick.
REFRESH_PER_CALL = 4
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
        read: Callable[[int], int | None] = process_memory_bytes,
        available: Callable[[], int] = lambda: host_memory()[1],
    ) -> None:
        if per_call < 1:
            raise ValueError(f"per_call must be at least 1, got {per_call}")
        self.per_call = per_call
        self.refresh_per_call = max(1, min(refresh_per_call, per_call))
        self._read = read
        self._available = available
        self._live: set[int] = set()
        # Live and measured: pid -> (bytes, stamp of that measurement).
        self._sizes: dict[int, tuple[int, int]] = {}
        self._total = 0  # sum of the bytes in _sizes
        self._stamp = 0
        self._new: deque[int] = deque()  # live, not measured yet (may hold stale entries)
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
        entry = self._sizes.pop(pid, None)
        if entry is not None:
            self._total -= entry[0]

    def _unmeasured(self, pid: int) -> bool:
        return pid in self._live and pid not in self._sizes

    # --- one tick ---------------------------------------------------------------------

    def due(self) -> list[int]:
        """The pids to measure now: at most ``per_call``, new ones first, then (at most
        ``refresh_per_call`` of) the ones measured longest ago."""
        batch: list[int] = []
        while self._new and len(batch) < self.per_call:
            pid = self._new.popleft()
            if self._unmeasured(pid) and pid not in batch:
                batch.append(pid)
        limit = min(self.per_call, len(batch) + self.refresh_per_call)
        while self._order and len(batch) < limit:
            pid, stamp = self._order.popleft()
            entry = self._sizes.get(pid)
            if entry is not None and entry[1] == stamp and pid not in batch:
                batch.append(pid)
        return batch

    def read(self, pids: Sequence[int]) -> tuple[list[int | None], int]:
        """The blocking part (any thread): each pid's size, and the host's MemAvailable."""
        return [self._read(pid) for pid in pids], self._available()

    def record(
        self, pids: Sequence[int], sizes: Sequence[int | None], available: int
    ) -> MemorySample:
        """Take the sizes of ``due()``'s pids in; the node's estimated total."""
        for pid, size in zip(pids, sizes, strict=True):
            if pid not in self._live:
                continue  # ended while it was being read
            self.removed(pid)
            self._live.add(pid)
            if size is None:
                # Gone (its teardown will say so) or unreadable: try again after the others.
                self._new.append(pid)
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
        return MemorySample(self._total + mean * unmeasured, measured, available)

    def measure_now(self) -> MemorySample:
        """One tick on the calling thread (tests, tools)."""
        pids = self.due()
        return self.record(pids, *self.read(pids))

    async def sample(self) -> MemorySample:
        """One tick: the slice is read in a worker thread, the bookkeeping stays here."""
        pids = self.due()
        sizes, available = await trio.to_thread.run_sync(self.read, pids)
        return self.record(pids, sizes, available)
