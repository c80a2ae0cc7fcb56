"""The garbage collector while instances start: fewer young collections, no full ones.

Each start allocates a few hundred objects that live as long as the instance
(its record, link, handle, buffers). With the default thresholds (700, 10,
10) a burst of starts runs a young collection every ~6 starts, and the
full collections — each walking every object the daemon holds, the records
of all the instances already started included — come ever more often as
those pile up: bench_startsteps measured the collector at 120-150 µs of
~800 µs of event-loop time per start at 1,000. While any start of the node
is under way the young threshold is :data:`BURST_GEN0` (40-50 µs per start,
no full collection in a burst of 1,000); the moment none is, the thresholds
in force before come back, so the request path of a steady node keeps its
short young collections. Node-wide, as the collector is: one
:class:`StartCollector` (:data:`START_GC`) counts the starts of every pool.

Where the young threshold is already higher it is left alone — and ``huselet
run`` sets it higher for good (``cmd/run.py``'s ``GC_GEN0_THRESHOLD``, 20,000,
with start-up frozen), so in the daemon this raise does nothing today. Young
collections stay short there anyway: a steady daemon at 100 req/s ran 80 in
60 s, median 0.07 ms, max 0.11 ms (gc.callbacks, session 11).
"""

from __future__ import annotations

import gc

BURST_GEN0 = 7000  # young allocations between two collections while starts run


class StartCollector:
    """Raises the collector's young threshold while at least one start is under way."""

    __slots__ = ("_saved", "_under_way", "gen0")

    def __init__(self, gen0: int = BURST_GEN0) -> None:
        self.gen0 = gen0
        self._under_way = 0
        self._saved: tuple[int, int, int] | None = None

    @property
    def under_way(self) -> int:
        return self._under_way

    def started(self) -> None:
        """A start began (the first of a burst raises the threshold)."""
        self._under_way += 1
        if self._under_way == 1:
            saved = gc.get_threshold()
            if saved[0] and saved[0] < self.gen0:  # 0: collection is off, leave it so
                self._saved = saved
                gc.set_threshold(self.gen0, saved[1], saved[2])

    def finished(self) -> None:
        """A start ended (ready, failed or stopped): the last one restores the thresholds."""
        if self._under_way <= 0:
            return  # never below zero: an unbalanced call must not re-raise it later
        self._under_way -= 1
        if not self._under_way and self._saved is not None:
            # Only if nobody changed them meanwhile (an embedder's own settings win).
            if gc.get_threshold()[0] == self.gen0:
                gc.set_threshold(*self._saved)
            self._saved = None


START_GC = StartCollector()
