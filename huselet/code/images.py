"""What an instance gets for its code, and how a failure to get it reads to callers.

:class:`ImageCode` (leased images) or :class:`PlainDirectory` (an unpacked
``package`` directory), both released when the instance ends; failures are
:class:`CodeUnavailable` with a message safe to show callers
(:func:`caller_reason`: no host path, no origin URL).
"""

from __future__ import annotations

import re
from pathlib import Path

from cache.errors import (
    CacheError,
    CacheFull,
    CorruptImage,
    DiskFull,
    FetchError,
    ImageNotFound,
    ImageTooLarge,
    TransientFetchError,
)
from cache.store import ImageLease, LowDiskSpace
from huselet.errors import HuseletError
from huselet.runtime.codeimage import CodeImage


class CodeUnavailable(HuseletError):
    """A function's image cannot be had; the pool answers its requests with 502."""

    status, code = 502, "code_unavailable"


class PlainDirectory:
    """The code of a ``package`` directory served as it is: nothing to lease."""

    image: Path | None = None
    digest: str | None = None
    layers: tuple[str, ...] = ()

    def release(self) -> None:
        pass


PLAIN_DIRECTORY = PlainDirectory()


class ImageCode:
    """An image (and the function's layers) leased for one instance's lifetime."""

    __slots__ = ("_leases", "digest", "image", "layers")

    def __init__(
        self, leases: list[ImageLease], native_dirs: tuple[str, ...], extract_root: Path
    ) -> None:
        main, *layers = leases
        self.image: Path | None = CodeImage.make(
            main.path,
            layers=tuple(str(lease.path) for lease in layers),
            native_dirs=native_dirs,
            extract_root=str(extract_root),
        )
        self.digest = main.digest
        self.layers = tuple(lease.digest for lease in layers)
        self._leases = leases

    def release(self) -> None:
        for lease in self._leases:
            lease.release()


# What a caller is told per failure; the first class that matches wins, so a
# subclass stands before its base (TransientFetchError is a FetchError).
_CALLER_REASONS: tuple[tuple[type[CacheError], str], ...] = (
    (ImageNotFound, "is not at its origin"),
    (ImageTooLarge, "is larger than this node accepts"),
    (LowDiskSpace, "cannot be installed now: the node's disk is nearly full"),
    (DiskFull, "cannot be installed: the node's disk is full"),
    (CacheFull, "cannot be installed: the node's image cache is full of images in use"),
    (CorruptImage, "came corrupt from its origin"),
    (TransientFetchError, "could not be fetched: its origin is unreachable or failing"),
    (FetchError, "could not be fetched: its origin refused it"),
)


def caller_reason(exc: CacheError) -> str:
    """What went wrong, for a caller: the kind of failure without paths or URLs."""
    reason = next(
        (text for cls, text in _CALLER_REASONS if isinstance(exc, cls)), "could not be installed"
    )
    cooling = re.search(r"\(not retrying for ([0-9.]+)s\)", str(exc))
    if cooling:
        reason += f" (next attempt in {cooling.group(1)}s)"
    return reason
