"""Each access key as verification needs it: one record, built once per key ring.

A signed request used to cost three dict lookups (the key, its tenant, its
MAC), an identity check that the MAC was still the key's, and a method call
for the validity window. :func:`key_records` does that work when a key ring is
loaded: :class:`KeyRecord` holds the entry, its tenant, an HMAC-SHA256 with
its padded-key states precomputed (RFC 2104; a request then costs two hash
copies, not a keyed OpenSSL context) and the validity window as two floats.
A key whose tenant the ring does not name has no record (it is unknown).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from typing import TYPE_CHECKING

from huselet.tenants.keys import KeyEntry, KeyRing, TenantSettings

if TYPE_CHECKING:
    from hashlib import _Hash

_IPAD = bytes(0x36 for _ in range(64))
_OPAD = bytes(0x5C for _ in range(64))


class Mac:
    """HMAC-SHA256 under one secret with its padded-key states precomputed (RFC 2104)."""

    __slots__ = ("_inner", "_outer")

    def __init__(self, secret: bytes) -> None:
        if len(secret) > 64:
            secret = hashlib.sha256(secret).digest()
        key = secret.ljust(64, b"\0")
        self._inner: _Hash = hashlib.sha256(bytes(a ^ b for a, b in zip(key, _IPAD, strict=True)))
        self._outer: _Hash = hashlib.sha256(bytes(a ^ b for a, b in zip(key, _OPAD, strict=True)))

    def hexdigest(self, message: bytes) -> bytes:
        """Lowercase hex HMAC-SHA256 of ``message``, as ASCII bytes."""
        inner = self._inner.copy()
        inner.update(message)
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.hexdigest().encode("ascii")


class KeyRecord:
    """One key, its tenant and its MAC; valid while ``not_before <= now < expires``."""

    __slots__ = ("entry", "expires", "mac", "not_before", "tenant")

    def __init__(self, entry: KeyEntry, tenant: TenantSettings) -> None:
        self.entry = entry
        self.tenant = tenant
        self.mac = Mac(entry.secret)
        # Open ends as infinities: the hot path compares two floats, no None tests.
        self.not_before = -math.inf if entry.not_before is None else entry.not_before
        self.expires = math.inf if entry.expires is None else entry.expires


def key_records(ring: KeyRing) -> Mapping[str, KeyRecord]:
    """A record per key id of ``ring`` whose tenant ``ring`` names."""
    return {
        key_id: KeyRecord(entry, ring.tenants[entry.tenant])
        for key_id, entry in ring.keys.items()
        if entry.tenant in ring.tenants
    }
