"""Token buckets, concurrency gates and the replay cache of the admission path.

All of them take the time as an argument (``now``, monotonic seconds), so the
admission core stays free of any clock or I/O and tests drive them exactly.
They are node-wide: one object per tenant / function / source, shared by every
connection. A reload re-tunes them in place (:meth:`TokenBucket.retune`) rather
than replacing them, so a tenant cannot reset its bucket by waiting for one.
"""

from __future__ import annotations

import heapq
import math
from collections import OrderedDict

from huselet.config.auth import RateLimit


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
    """One bucket per source address, at most ``capacity`` of them (least recently used go).

    Evicting a bucket forgets what it was owed; the bound is what keeps a flood
    of distinct addresses from costing unbounded memory.
    """

    def __init__(self, limit: RateLimit, capacity: int) -> None:
        self.limit = limit
        self.capacity = capacity
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()

    def get(self, source: str, now: float) -> TokenBucket:
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


class ReplayCacheFull(Exception):
    """Every slot holds a signature that is still inside its window."""


class ReplayCache:
    """Signatures seen within their validity window, at most ``capacity`` of them.

    A signature is only accepted while its timestamp is within the skew window,
    so it need only be remembered until the window has passed (``until``).
    When every slot is taken by a live signature the cache refuses rather than
    forgets: forgetting would let that signature be replayed.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._until: dict[bytes, float] = {}
        self._expiry: list[tuple[float, bytes]] = []  # heap by expiry

    def purge(self, now: float) -> None:
        heap = self._expiry
        while heap and heap[0][0] <= now:
            until, sig = heapq.heappop(heap)
            if self._until.get(sig) == until:  # not re-recorded since
                del self._until[sig]

    def seen(self, signature: bytes, until: float, now: float) -> bool:
        """Record ``signature`` (valid until ``until``); True if it was already there."""
        if signature in self._until and self._until[signature] > now:
            return True
        self.purge(now)
        if len(self._until) >= self.capacity:
            raise ReplayCacheFull
        self._until[signature] = until
        heapq.heappush(self._expiry, (until, signature))
        return False

    def __len__(self) -> int:
        return len(self._until)


class TenantReplayCaches:
    """One :class:`ReplayCache` per tenant, each holding up to ``capacity`` signatures.

    Shared, one tenant's legitimate traffic (or a flood of correctly signed
    requests) could fill the cache and have every other tenant's signed
    requests refused with 503: the caches are split so that a full cache
    refuses only its own tenant. Memory is bounded by ``capacity`` times the
    tenants the keys file names (a tenant no longer named keeps its cache until
    its signatures have expired).
    """

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._caches: dict[str, ReplayCache] = {}

    @property
    def capacity(self) -> int:
        return self._capacity

    @capacity.setter
    def capacity(self, value: int) -> None:
        self._capacity = value
        for cache in self._caches.values():
            cache.capacity = value

    def seen(self, tenant: str, signature: bytes, until: float, now: float) -> bool:
        """:meth:`ReplayCache.seen` in ``tenant``'s own cache (raises ReplayCacheFull)."""
        cache = self._caches.get(tenant)
        if cache is None:
            cache = self._caches[tenant] = ReplayCache(self._capacity)
        return cache.seen(signature, until, now)

    def keep_only(self, tenants: set[str], now: float) -> None:
        """Drop the caches of tenants the keys file no longer names, once they hold
        no live signature (dropped earlier, a tenant named again at once could
        have a request replayed)."""
        for name in [t for t in self._caches if t not in tenants]:
            cache = self._caches[name]
            cache.purge(now)
            if not len(cache):
                del self._caches[name]

    def __len__(self) -> int:
        return sum(len(cache) for cache in self._caches.values())


def retry_after(wait_s: float) -> int:
    """Whole seconds a throttled caller should wait (at least 1)."""
    return max(1, math.ceil(wait_s))
