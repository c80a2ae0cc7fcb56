"""The replay cache: every signature seen within the skew window, per tenant, in bounded memory.

A signed request is accepted only while its *signed* timestamp is within
``max_skew_s`` of the node's clock, so a signature need only be remembered
while its timestamp is. A replay carries the same timestamp (it is covered by
the signature), so it can only ever be found in one place: the bucket of that
timestamp's second. The cache is therefore a dict of per-second buckets; a
lookup touches one bucket, and when a second leaves the window its whole
bucket is dropped at once (no per-signature expiry heap).

A bucket stores 64-bit digests (the first 16 hex digits of the signature,
which is an HMAC-SHA256 and so uniformly distributed; a collision between two
of a tenant's own signatures in one second is a chance of about n²/2⁶⁵) in an
open-addressing table (``array('Q')``, linear probing, at most half full):
16 to 32 bytes per signature instead of the ~150 of a Python set of bytes.

Memory is bounded per tenant (``auth.replay_cache_mb``): the tables' bytes are
counted, and a table that would grow past the bound is not grown; the
signature is refused (:class:`ReplayCacheFull`, a 503) rather than forgotten
or accepted unrecorded, either of which would let it be replayed.

Times are arguments (``now``: the wall clock, seconds): no clock here.
"""

from __future__ import annotations

from array import array

SLOT_BYTES = 8
MIN_SLOTS = 8  # a tenant at 1 request/s costs 64 bytes a second of window
# Purge at most once per this many seconds: a bucket is dropped at most this late.
_PURGE_EVERY_S = 1.0


class ReplayCacheFull(Exception):
    """The tenant's bound is reached by signatures that are still inside the window."""


def digest_key(signature: bytes) -> int:
    """The 64-bit key of a (verified, lowercase hex) signature; never 0 (the empty slot)."""
    try:
        key = int(signature[:16], 16)
    except ValueError:  # not hex: cannot have verified, but stay total
        key = int.from_bytes(signature[:8].ljust(8, b"\0"), "little")
    return key or 1


class _Table:
    """An open-addressing set of non-zero 64-bit ints, at most half full."""

    __slots__ = ("count", "mask", "slots")

    def __init__(self, size: int) -> None:
        self.slots = array("Q", bytes(size * SLOT_BYTES))
        self.mask = size - 1
        self.count = 0

    @property
    def nbytes(self) -> int:
        return (self.mask + 1) * SLOT_BYTES

    def find(self, key: int) -> int:
        """The slot holding ``key``, or the (empty) slot where it belongs, negated minus one."""
        slots, mask = self.slots, self.mask
        i = key & mask  # the key's low bits are as random as the HMAC
        while True:
            value = slots[i]
            if value == key:
                return i
            if not value:
                return -1 - i
            i = (i + 1) & mask

    def grown(self) -> _Table:
        bigger = _Table((self.mask + 1) * 2)
        slots, mask = bigger.slots, bigger.mask
        for key in filter(None, self.slots):  # the occupied slots (C-level skip of empties)
            i = key & mask
            while slots[i]:
                i = (i + 1) & mask
            slots[i] = key
        bigger.count = self.count
        return bigger


class ReplayCache:
    """One tenant's signatures by the second of their signed timestamp, up to ``max_bytes``.

    ``window_s``: how long after its second a signature can still be accepted
    (``max_skew_s + 1``); read at every purge, so a reload that widens the skew
    keeps buckets longer at once.
    """

    __slots__ = ("_buckets", "_count", "_purged_at", "max_bytes", "nbytes", "window_s")

    def __init__(self, max_bytes: int, window_s: float) -> None:
        self.max_bytes = max_bytes
        self.window_s = window_s
        self.nbytes = 0  # the tables' slot arrays, the bulk of the memory
        self._count = 0
        self._buckets: dict[int, _Table] = {}
        self._purged_at = float("-inf")

    def seen(self, signature: bytes, second: int, now: float) -> bool:
        """Record ``signature``, signed for ``second``; True if it was seen before.

        Raises :class:`ReplayCacheFull` when recording it would pass ``max_bytes``.
        """
        if now - self._purged_at >= _PURGE_EVERY_S:
            self.purge(now)
        try:  # digest_key, inline: this runs once per signed request
            key = int(signature[:16], 16) or 1
        except ValueError:
            key = digest_key(signature)
        table = self._buckets.get(second)
        if table is None:
            if self.nbytes + MIN_SLOTS * SLOT_BYTES > self.max_bytes:
                raise ReplayCacheFull
            table = self._buckets[second] = _Table(MIN_SLOTS)
            self.nbytes += table.nbytes
        # _Table.find, inline (the same probe sequence).
        slots, mask = table.slots, table.mask
        i = key & mask
        while value := slots[i]:
            if value == key:
                return True
            i = (i + 1) & mask
        if (table.count + 1) * 2 > mask + 1:  # would be over half full: grow first
            if self.nbytes + table.nbytes > self.max_bytes:
                raise ReplayCacheFull
            self.nbytes += table.nbytes
            table = self._buckets[second] = table.grown()
            slots, i = table.slots, -1 - table.find(key)
        slots[i] = key
        table.count += 1
        self._count += 1
        return False

    def purge(self, now: float) -> None:
        """Drop the buckets whose second has left the window (all of them at once)."""
        self._purged_at = now
        # A timestamp this old is refused as stale before the cache is asked.
        oldest = now - self.window_s
        expired = [second for second in self._buckets if second <= oldest]
        for second in expired:
            table = self._buckets.pop(second)
            self.nbytes -= table.nbytes
            self._count -= table.count

    def __len__(self) -> int:
        return self._count


class TenantReplayCaches:
    """One :class:`ReplayCache` per tenant, each bounded by ``max_bytes``.

    Shared, one tenant's legitimate traffic (or a flood of correctly signed
    requests) could fill the cache and have every other tenant's signed
    requests refused: a full cache refuses only its own tenant. Memory is
    bounded by ``max_bytes`` times the tenants the keys file names (a tenant no
    longer named keeps its cache until its signatures have left the window).
    """

    def __init__(self, max_bytes: int, window_s: float) -> None:
        self._max_bytes = max_bytes
        self._window_s = window_s
        self._caches: dict[str, ReplayCache] = {}

    def configure(self, max_bytes: int, window_s: float) -> None:
        """New bounds (a reload): a lower ``max_bytes`` applies to growth from now on;
        nothing recorded is forgotten early."""
        self._max_bytes, self._window_s = max_bytes, window_s
        for cache in self._caches.values():
            cache.max_bytes, cache.window_s = max_bytes, window_s

    def seen(self, tenant: str, signature: bytes, second: int, now: float) -> bool:
        """:meth:`ReplayCache.seen` in ``tenant``'s own cache (raises ReplayCacheFull)."""
        cache = self._caches.get(tenant)
        if cache is None:
            cache = self._caches[tenant] = ReplayCache(self._max_bytes, self._window_s)
        return cache.seen(signature, second, now)

    def keep_only(self, tenants: set[str], now: float) -> None:
        """Drop the caches of tenants the keys file no longer names, once they hold
        no live signature (dropped earlier, a tenant named again at once could
        have a request replayed)."""
        for name in [t for t in self._caches if t not in tenants]:
            cache = self._caches[name]
            cache.purge(now)
            if not len(cache):
                del self._caches[name]

    @property
    def nbytes(self) -> int:
        return sum(cache.nbytes for cache in self._caches.values())

    def usage(self) -> dict[str, tuple[int, int]]:
        """Per tenant: signatures held and the bytes of their tables (of ``max_bytes``)."""
        return {name: (len(cache), cache.nbytes) for name, cache in self._caches.items()}

    def __len__(self) -> int:
        return sum(len(cache) for cache in self._caches.values())
