"""A lock-free histogram for the event loop's hot path.

prometheus_client's own ``Histogram`` takes a lock and resolves labels on
every observation; the daemon observes from one thread (the Trio loop), so a
list of bucket counts and a running sum do the same job for a fraction of
the cost. The exposition still goes through prometheus_client: a collector
turns :meth:`Histogram.buckets` into a ``HistogramMetricFamily`` at scrape time.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence

# Seconds. Requests: sub-millisecond warm calls up to the longest timeouts.
REQUEST_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0
)  # fmt: skip
# Cold-start phases: a fork start takes ~1 ms, an image fetch may take seconds.
PHASE_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0
)  # fmt: skip
# Event-loop lag: the probe's own period (0.1 s) dominates what it can see.
LAG_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class Histogram:
    """Bucket counts (``le`` semantics) and a sum; single-threaded by design."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)  # the last one is +Inf
        self.sum = 0.0

    def observe(self, value: float) -> None:
        # bisect_left: a value equal to a bound belongs to that bound's bucket (le).
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    @property
    def count(self) -> int:
        return sum(self.counts)

    def buckets(self) -> list[tuple[str, float]]:
        """Cumulative ``(le, count)`` pairs as the exposition wants them."""
        out: list[tuple[str, float]] = []
        running = 0
        for bound, n in zip(self.bounds, self.counts, strict=False):
            running += n
            out.append((_le(bound), running))
        out.append(("+Inf", running + self.counts[-1]))
        return out

    def quantile(self, q: float) -> float | None:
        """An estimate (the upper bound of the bucket holding quantile ``q``); None if empty."""
        total = self.count
        if total == 0:
            return None
        rank = q * total
        running = 0
        for bound, n in zip(self.bounds, self.counts, strict=False):
            running += n
            if running >= rank:
                return bound
        return float("inf")


def _le(bound: float) -> str:
    return repr(float(bound))
