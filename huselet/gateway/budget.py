"""A node-wide bound on request-body bytes held in memory (``gateway.max_buffered_mb``).

``max_body_bytes`` bounds one body and ``max_connections`` the connections,
but their product is not a sane bound (1,024 x 6 MiB = 6 GiB): 300 concurrent
large bodies once took the daemon from 36 MB to 2.5 GB. :class:`BodyBudget`
holds the total: a request reserves its body's size *before* a byte of the
body is read (the declared ``Content-Length``, or ``max_body_bytes`` for a
chunked body) and keeps the reservation until its reply is written, since
the body lives on in the queue and in flight. A request that does not fit is
answered 503 with ``Retry-After`` at once, without reading its body.

Giving memory back: freed bodies land in the C allocator, which keeps them
(glibc raises its mmap threshold after freeing a large block, so later
bodies come from a heap that never shrinks). :func:`tune_allocator` pins
the threshold so large blocks are mapped and unmapped, and the budget calls
``malloc_trim`` when it drains after a burst, so RSS returns to where it was.
"""

from __future__ import annotations

import ctypes
import ctypes.util

from huselet.gateway.responses import Overloaded
from huselet.log import get_logger

log = get_logger("gateway.budget")

M_MMAP_THRESHOLD = -3  # mallopt parameter (glibc malloc.h)
MMAP_THRESHOLD_BYTES = 256 * 1024
# Trim only after at least this much was buffered since the last trim: a trim
# walks the heap (~ms), not something to do after every small request.
TRIM_AFTER_BYTES = 64 * 1024 * 1024
UNLIMITED = 1 << 62  # for a core built without settings (tests, embedders)


def _libc() -> ctypes.CDLL | None:
    try:
        name = ctypes.util.find_library("c")
        libc = ctypes.CDLL(name or "libc.so.6")
        libc.malloc_trim  # noqa: B018  (glibc only: musl has none)
        libc.mallopt  # noqa: B018
    except (OSError, AttributeError):
        return None
    return libc


_LIBC = _libc()


def tune_allocator() -> bool:
    """Make large allocations (bodies) mmap-backed so freeing them returns memory."""
    if _LIBC is None:
        return False
    return bool(_LIBC.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))


def release_free_memory() -> None:
    """Return the allocator's free pages to the kernel (glibc ``malloc_trim(0)``)."""
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


class BodyBudget:
    """Bytes of request bodies reserved right now, against ``limit_bytes``."""

    def __init__(self, limit_bytes: int) -> None:
        self.limit_bytes = limit_bytes
        self.used_bytes = 0
        self.peak_bytes = 0
        self.refused = 0
        self._since_trim = 0

    def reserve(self, size: int) -> int:
        """Reserve ``size`` bytes or raise :class:`Overloaded` (503, Retry-After) at once."""
        if size <= 0:
            return 0
        if self.used_bytes + size > self.limit_bytes:
            self.refused += 1
            raise Overloaded(
                "the node is buffering as many request bodies as it may "
                f"(gateway.max_buffered_mb = {self.limit_bytes >> 20}); retry shortly",
                retry_after_s=1,
            )
        self.used_bytes += size
        self.peak_bytes = max(self.peak_bytes, self.used_bytes)
        self._since_trim += size
        return size

    def release(self, size: int) -> None:
        if size <= 0:
            return
        self.used_bytes -= size
        if self.used_bytes == 0 and self._since_trim >= TRIM_AFTER_BYTES:
            # The burst is over: hand what it left in the allocator back.
            self._since_trim = 0
            release_free_memory()

    def describe(self) -> dict[str, int]:
        return {
            "limit_bytes": self.limit_bytes,
            "used_bytes": self.used_bytes,
            "peak_bytes": self.peak_bytes,
            "refused": self.refused,
        }
