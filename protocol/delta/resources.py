"""Versioned resource store with idempotent apply and an incremental digest.

A resource is identified by ``(kind, name)`` and carries a positive integer
``version``; an update with a version ≤ the stored one is ignored, so applying
the same delta twice (replay, duplicate, snapshot overlap) changes nothing.

The digest is the anti-entropy check shared by both ends (PROTOCOL.md §Digest):

    h(kind, name, version) = first 16 bytes of SHA-256(
        u16be(len(kind_utf8)) ‖ u16be(len(name_utf8)) ‖ u64be(version) ‖ kind_utf8 ‖ name_utf8)
    digest = (Σ h over all resources) mod 2^128, as 16 big-endian bytes

A sum instead of a hash over the sorted set makes it O(1) per change on both
ends (a scheduler holding thousands of nodes never sorts), while still
catching any missing, extra or differently-versioned resource. Bodies are not
hashed: under the versioning rule (version, key) identifies the body, and
cross-language canonical msgpack is not something to depend on.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterator
from typing import Generic, TypeVar

from protocol.delta.errors import LimitExceeded

V = TypeVar("V")

_HEAD = struct.Struct(">HHQ")
_MASK = (1 << 128) - 1
_sha256 = hashlib.sha256


def entry_hash(kind: str, name: str, version: int) -> int:
    """The 128-bit digest contribution of one resource."""
    k = kind.encode()
    n = name.encode()
    return int.from_bytes(_sha256(_HEAD.pack(len(k), len(n), version) + k + n).digest()[:16])


def digest_of(entries: Iterator[tuple[str, str, int]]) -> bytes:
    """Digest of a set of ``(kind, name, version)`` computed from scratch."""
    total = 0
    for kind, name, version in entries:
        total += entry_hash(kind, name, version)
    return (total & _MASK).to_bytes(16)


class ResourceStore(Generic[V]):
    """``(kind, name) → (version, value)`` with idempotent upsert/remove and a digest.

    The value is opaque: the node stores each resource's encoded delta item,
    the scheduler stores the decoded body. ``max_items`` bounds a store filled
    by a peer; going past it raises :class:`LimitExceeded`.
    """

    __slots__ = ("_items", "_sum", "max_items")

    def __init__(self, max_items: int | None = None) -> None:
        self.max_items = max_items
        # value tuple keeps the entry's hash so replacing it needs one SHA-256, not two
        self._items: dict[tuple[str, str], tuple[int, V, int]] = {}
        self._sum = 0

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: object) -> bool:
        return key in self._items

    def get(self, kind: str, name: str) -> tuple[int, V] | None:
        entry = self._items.get((kind, name))
        return None if entry is None else (entry[0], entry[1])

    def version(self, kind: str, name: str) -> int:
        """Stored version, 0 if absent."""
        entry = self._items.get((kind, name))
        return 0 if entry is None else entry[0]

    def upsert(self, kind: str, name: str, version: int, value: V) -> bool:
        """Store ``value`` unless a version ≥ ``version`` is stored; True if it changed."""
        key = (kind, name)
        items = self._items
        current = items.get(key)
        if current is not None:
            if version <= current[0]:
                return False
            self._sum -= current[2]
        elif self.max_items is not None and len(items) >= self.max_items:
            raise LimitExceeded(f"more than {self.max_items} resources")
        h = entry_hash(kind, name, version)
        items[key] = (version, value, h)
        self._sum += h
        return True

    def remove(self, kind: str, name: str, version: int) -> bool:
        """Remove the resource if its stored version is < ``version``; True if it changed."""
        key = (kind, name)
        current = self._items.get(key)
        if current is None or version <= current[0]:
            return False
        del self._items[key]
        self._sum -= current[2]
        return True

    def digest(self) -> bytes:
        return (self._sum & _MASK).to_bytes(16)

    def state(self) -> tuple[bytes, int]:
        """``(digest, count)`` as carried on the wire."""
        return self.digest(), len(self._items)

    def recompute_digest(self) -> bytes:
        """Digest from scratch (audits the incremental one; O(n))."""
        return digest_of((k, n, e[0]) for (k, n), e in self._items.items())

    def entries(self) -> Iterator[tuple[str, str, int, V]]:
        """Every resource as ``(kind, name, version, value)``, in insertion order."""
        for (kind, name), entry in self._items.items():
            yield kind, name, entry[0], entry[1]

    def values(self) -> Iterator[V]:
        for entry in self._items.values():
            yield entry[1]

    def as_dict(self) -> dict[tuple[str, str], tuple[int, V]]:
        """A copy as ``{(kind, name): (version, value)}`` (tests, admin dumps)."""
        return {key: (e[0], e[1]) for key, e in self._items.items()}
