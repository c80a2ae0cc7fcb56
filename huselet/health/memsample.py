"""The instances' memory, measured a bounded slice at a time.

Reading ``/proc/PID/smaps_rollup`` walks the process's page tables: tens to
hundreds of µs per instance. The memory loop measured every instance every
second, so an idle node with thousands of instances spent a good part of a
core on it (issue 12). :class:`RollingMemorySampler` keeps each instance's
last size and, per call, measures at most ``per_call`` instances: new ones
first (an instance that just started is what changes the total), then the
ones measured longest ago. Instances not measured yet count as the mean of
those that are, so a burst of starts shows in the total at once. The host's
``MemAvailable`` (one cheap read) is taken on every call: it is the signal
that reacts within one interval whatever the node's size.

It is a drop-in ``measure`` for :class:`~huselet.health.pressure.MemoryPressure`
(called in a worker thread, one call at a time).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence

from huselet.health.pressure import MemorySample, host_memory, process_memory_bytes

# smaps_rollup reads per memory-loop tick, whatever the node's size. 128 a tick
# were still the largest idle cost of a node with 2,000 idle instances (perf:
# ~40 % of the daemon's idle CPU in smaps_account); 16 refresh all 2,000 every
# ~2 minutes, while new instances are measured at once and MemAvailable (what
# reacts within one interval) is read on every tick.
PER_CALL = 16


class RollingMemorySampler:
    def __init__(
        self,
        per_call: int = PER_CALL,
        *,
        read: Callable[[int], int | None] = process_memory_bytes,
        available: Callable[[], int] = lambda: host_memory()[1],
    ) -> None:
        if per_call < 1:
            raise ValueError(f"per_call must be at least 1, got {per_call}")
        self.per_call = per_call
        self._read = read
        self._available = available
        self._sizes: dict[int, int] = {}  # pid -> bytes at its last measurement
        self._total = 0  # sum of _sizes
        self._order: deque[int] = deque()  # measured pids, least recently measured first

    def _forget(self, pid: int) -> None:
        self._total -= self._sizes.pop(pid)

    def _measure(self, pid: int) -> None:
        size = self._read(pid)
        if pid in self._sizes:
            self._forget(pid)
        if size is None:
            return  # gone or unreadable: not counted
        self._sizes[pid] = size
        self._total += size
        self._order.append(pid)

    def __call__(self, pids: Sequence[int]) -> MemorySample:
        live = set(pids)
        for pid in [p for p in self._sizes if p not in live]:
            self._forget(pid)  # ended instances leave the total at once
        budget = self.per_call
        for pid in pids:
            if budget == 0:
                break
            if pid not in self._sizes:
                self._measure(pid)
                budget -= 1
        while budget > 0 and self._order:
            pid = self._order.popleft()
            if pid not in self._sizes or pid not in live:
                continue  # a stale entry: forgotten or measured again since
            self._measure(pid)
            budget -= 1
        if len(self._order) > 2 * len(self._sizes) + self.per_call:
            # Stale entries pile up when instances churn: compact now and then.
            self._order = deque(p for p in self._order if p in self._sizes)
        measured = len(self._sizes)
        unmeasured = sum(1 for p in live if p not in self._sizes)
        mean = self._total // measured if measured else 0
        return MemorySample(self._total + mean * unmeasured, measured, self._available())
