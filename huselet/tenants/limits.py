"""Token buckets and concurrency gates of the admission path (the replay cache: replay.py).

All of them take the time as an argument (``now``, monotonic seconds), so the
admission core stays free of any clock or I/O and tests drive them exactly.
They are node-wide: one object per tenant / function / source, shared by every
connection. A reload re-tunes them in place (:meth:`TokenBucket.retune`) rather
than replacing them, so a tenant cannot reset its bucket by waiting for one.
"""

from __future__ import annotations

import math
from collections import OrderedDict

from huselet.config.auth import RateLimit
from huselet.tenants.sources import source_key


class TokenBucket:
    """``rate`` tokens per second up to ``burst``; a request takes one."""

    __slots__ = ("_stamp", "_tokens", "burst", "rate")

    def __init__(self, limit: RateLimit, now: float) -> None:
        self.rate = limit.rate_per_s
        self.burst = limit.burst
        self._tokens = limit.burst
        self._stamp = now

    def _refill(self, now: float) -> float:
        if now > self._stamp:
            self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
            self._stamp = now
        return self._tokens

    def ready(self, now: float) -> bool:
        return self._refill(now) >= 1.0

    def take(self, now: float) -> None:
        self._refill(now)
        self._tokens -= 1.0

    def wait_s(self, now: float) -> float:
        """Seconds until one token is available (0 when one is)."""
        missing = 1.0 - self._refill(now)
        return 0.0 if missing <= 0 else missing / self.rate

    def retune(self, limit: RateLimit, now: float) -> None:
        """New rate and burst; the tokens the bucket holds stay (capped at the new burst)."""
        self._refill(now)
        self.rate = limit.rate_per_s
        self.burst = limit.burst
        self._tokens = min(self._tokens, self.burst)

    def level(self, now: float) -> float:
        return self._refill(now)


class Gate:
    """A concurrency cap: ``limit`` requests at once (None: no cap, still counted)."""

    __slots__ = ("in_flight", "limit")

    def __init__(self, limit: int | None) -> None:
        self.limit = limit
        self.in_flight = 0

    def has_room(self) -> bool:
        return self.limit is None or self.in_flight < self.limit


class SourceBuckets:
    """One bucket per source (:func:`~huselet.tenants.sources.source_key`), at most
    ``capacity`` of them (least recently used go).

    Evicting a bucket forgets what it was owed; the bound is what keeps a flood
    of distinct addresses from costing unbounded memory.
    """

    def __init__(self, limit: RateLimit, capacity: int) -> None:
        self.limit = limit
        self.capacity = capacity
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()

    def get(self, source: str, now: float) -> TokenBucket:
        source = source_key(source)  # an IPv6 /64 is one source
        bucket = self._buckets.get(source)
        if bucket is None:
            bucket = TokenBucket(self.limit, now)
            self._buckets[source] = bucket
            if len(self._buckets) > self.capacity:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(source)
        return bucket

    def retune(self, limit: RateLimit, capacity: int, now: float) -> None:
        self.limit = limit
        self.capacity = capacity
        for bucket in self._buckets.values():
            bucket.retune(limit, now)
        while len(self._buckets) > capacity:
            self._buckets.popitem(last=False)

    def __len__(self) -> int:
        return len(self._buckets)


def retry_after(wait_s: float) -> int:
    """Whole seconds a throttled caller should wait (at least 1)."""
    return max(1, math.ceil(wait_s))
