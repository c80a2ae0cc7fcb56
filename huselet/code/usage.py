"""The package manager's bookkeeping: which images it knows, who uses them, recent events.

:class:`CacheBookkeeping` is mixed into
:class:`~huselet.code.packages.PackageManager` (whose ``__init__`` sets the
attributes declared here); it holds the records behind ``huselet ctl cache``
and the refetch of quarantined images, apart from resolving and leasing.
"""

from __future__ import annotations

import time
from collections import Counter, OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from cache.origin import Origin
from cache.store import ImageStore
from huselet.config import Config
from huselet.errors import HuseletError
from huselet.log import get_logger

log = get_logger("packages")  # the package manager's logger, as before the split

MAX_LISTED = 2000  # image rows in one `ctl cache` reply (the admin frame is bounded)
MAX_TRACKED_IMAGES = 4096  # usage records for images no function config names


@dataclass
class ImageUsage:
    """What the node knows about one image beyond the store: who uses it, how it is hit."""

    origin: Origin | None = None
    source: str = ""  # "package", "image", "digest", "published", "hint"
    functions: set[str] = field(default_factory=set)
    hits: Counter[str] = field(default_factory=Counter)  # by level: memory, disk, origin
    last_used: float | None = None  # wall-clock time of the last lease


@dataclass
class Resolved:
    """How one code source (a directory, an image file) maps to a digest right now."""

    digest: str | None = None
    origin: Origin | None = None
    ready: trio.Event = field(default_factory=trio.Event)
    error: str | None = None  # caller-safe: why there is no digest
    failed_at: float = 0.0
    stamp: tuple[int, int, int] | None = None  # (ino, size, mtime_ns) of an image file


class CacheBookkeeping:
    """Usage records, events and inspection of the package manager (a mixin)."""

    config: Config
    store: ImageStore
    events: deque[dict[str, Any]]
    # Set by the daemon to the prefetcher's hint: how a quarantined image comes back.
    refetch: Callable[[str, Origin], object] | None
    _usage: OrderedDict[str, ImageUsage]
    _dirs: dict[Path, Resolved]

    # -- bookkeeping ----------------------------------------------------------------------------

    def _track(
        self, digest: str, origin: Origin | None, source: str, function: str | None = None
    ) -> ImageUsage:
        usage = self._usage.get(digest)
        if usage is None:
            usage = self._usage[digest] = ImageUsage(origin=origin, source=source)
            self._trim_usage()
        elif origin is not None:
            usage.origin = origin
        if function is not None:
            usage.functions.add(function)
        self._usage.move_to_end(digest)
        return usage

    def _trim_usage(self) -> None:
        configured = len(self.config.functions)
        for digest in list(self._usage):
            if len(self._usage) <= MAX_TRACKED_IMAGES + configured:
                break
            if not self._usage[digest].functions and not self.store.contains(digest):
                del self._usage[digest]

    def origin_of(self, digest: str) -> Origin | None:
        usage = self._usage.get(digest)
        return usage.origin if usage else None

    def remember(self, digest: str, origin: Origin, source: str) -> None:
        """An image learnt of outside function configs (published, hinted): keep its origin."""
        self._track(digest, origin, source)

    def note(self, kind: str, digest: str | None, detail: str, **fields: Any) -> None:
        """Record a cache event for ``huselet ctl cache`` (bounded)."""
        self.events.append(
            {"time": time.time(), "kind": kind, "digest": digest, "detail": detail, **fields}
        )

    def image_corrupt(self, digest: str, reason: str) -> None:
        """The scrub quarantined ``digest``: report it and fetch it again if we know from where."""
        usage = self._usage.get(digest)
        self.note("quarantined", digest, reason)
        log.error(
            "image quarantined",
            digest=digest,
            reason=reason,
            functions=sorted(usage.functions) if usage else [],
        )
        if usage is not None and usage.origin is not None and self.refetch is not None:
            try:
                self.refetch(digest, usage.origin)
            except HuseletError as exc:
                log.warning("cannot queue refetch", digest=digest, error=exc.message)

    # -- inspection ------------------------------------------------------------------------------

    def describe(self) -> dict[str, Any]:
        """``huselet ctl cache``: images per level, most recently used first."""
        rows = []
        installed = set()
        for image in reversed(self.store.images()):
            installed.add(image.digest)
            usage = self._usage.get(image.digest) or ImageUsage()
            rows.append(
                self._row(image.digest, "memory" if image.mapped else "disk", usage, image.size)
                | {"pins": image.pins, "last_used": usage.last_used or _mtime(image.path)}
            )
        for digest, usage in reversed(self._usage.items()):
            if digest not in installed and usage.functions:
                rows.append(self._row(digest, "origin", usage, None))
        packing = sorted(str(d) for d, r in self._dirs.items() if not r.ready.is_set())
        return {
            "images": rows[:MAX_LISTED],
            "truncated": max(0, len(rows) - MAX_LISTED),
            "packing": packing,
            "budgets": {
                "disk_bytes": self.store.disk_budget_bytes,
                "memory_bytes": self.store.memory_budget_bytes,
            },
            "stats": self.stats(),
            "events": list(self.events),
        }

    def _row(self, digest: str, level: str, usage: ImageUsage, size: int | None) -> dict[str, Any]:
        return {
            "digest": digest,
            "level": level,
            "size": size,
            "functions": sorted(usage.functions),
            "source": usage.source,
            "hits": dict(usage.hits),
            "last_used": usage.last_used,
            "pins": 0,
        }

    def stats(self) -> dict[str, Any]:
        """Hit and miss counters per level, for ``status``."""
        s = self.store.stats
        return {
            "memory": {
                "hits": s.memory_hits,
                "misses": s.memory_misses,
                "images": s.mapped_images,
                "bytes": s.mapped_bytes,
                "evictions": s.memory_evictions,
            },
            "disk": {
                "hits": s.disk_hits,
                "misses": s.disk_misses,
                "images": s.disk_images,
                "bytes": s.disk_bytes,
                "evictions": s.disk_evictions,
            },
            "origin": {
                "fetches": s.fetches,
                "failures": s.fetch_failures,
                "coalesced": s.coalesced,
                "bytes": s.bytes_fetched,
            },
            "quarantined": s.quarantined,
        }


def _mtime(path: Path) -> float | None:
    try:
        return path.stat().st_mtime
    except OSError:
        return None
