"""Event-loop stalls measured by the loop itself: a Trio instrument, no timer.

A lag probe that sleeps and measures how late it woke sees a stall only if
the stall spans one of its wake-ups, so it had to wake ten times a second —
on an idle daemon that was about half of all its CPU (issue 12: an idle node
must cost ~nothing). :class:`LoopStalls` instead hooks Trio's two per-iteration
callbacks and keeps the worst of, per loop iteration:

- the run batch: from the end of one I/O wait to the start of the next, the
  time the loop spent running tasks without looking at I/O or timers (a
  blocking call, a CPU hog in a task);
- the overshoot of the I/O wait: how much later than its timeout ``epoll``
  came back with the loop's thread running again (no CPU for it, or a worker
  thread holding the GIL).

Both are what a timer due in that window would have been late by, and every
such window is seen, not only those a probe tick falls into. Cost: two calls
per loop iteration (not per task), and nothing while the loop sleeps.
"""

from __future__ import annotations

import time

import trio


class LoopStalls(trio.abc.Instrument):
    """The longest stall (seconds) since the last :meth:`take`."""

    def __init__(self) -> None:
        self._now = time.perf_counter
        self.worst = 0.0
        self._ran_from: float | None = None  # end of the last I/O wait
        self._wait_from = 0.0
        self._timeout = 0.0

    def before_io_wait(self, timeout: float) -> None:
        now = self._now()
        if self._ran_from is not None and now - self._ran_from > self.worst:
            self.worst = now - self._ran_from
        self._wait_from, self._timeout = now, timeout

    def after_io_wait(self, timeout: float) -> None:
        now = self._now()
        overshoot = now - self._wait_from - self._timeout
        if overshoot > self.worst:
            self.worst = overshoot
        self._ran_from = now

    def take(self) -> float:
        """The worst stall since the last call, and start afresh."""
        worst, self.worst = self.worst, 0.0
        return worst
