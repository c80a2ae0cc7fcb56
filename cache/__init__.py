"""Function code as read-only, content-addressed, mmap-able package images.

- :mod:`cache.format` — the byte layout (specified in ``cache/FORMAT.md``).
- :mod:`cache.builder` — :func:`pack_directory`: a source tree → ``<digest>.hlimg``.
- :mod:`cache.validate` — header/index checks and hashing with ``pread`` (no mapping).
- :mod:`cache.reader` — :class:`ImageReader`: map a validated image, look up, read.
- :mod:`cache.importer` — :func:`install_image_importer`: import from a mapping.
- :mod:`cache.origin` — fetch an image by digest (directory, file://, http(s)://).
- :mod:`cache.store` — :class:`ImageStore`: disk + mapped levels, LRU, singleflight.
- :mod:`cache.errors` — :class:`CacheError` and its typed subclasses.

Names are re-exported lazily (PEP 562): a function instance that only needs
the importer must not pay for the builder's or the store's imports (trio,
zstandard), so ``import cache.importer`` loads just what it uses.
"""

from __future__ import annotations

import importlib

from cache.errors import (
    BuildError,
    CacheError,
    CacheFull,
    CorruptImage,
    DigestMismatch,
    DiskFull,
    FetchError,
    ImageNotFound,
    ImageTooLarge,
    TransientFetchError,
    UnsupportedImage,
)

TYPE_CHECKING = False  # see cache/format.py: typing is too slow to import at start-up
if TYPE_CHECKING:
    from cache.builder import ImageInfo, pack_directory
    from cache.importer import ImageFinder, install_image_importer, uninstall_image_importer
    from cache.origin import DirectoryOrigin, HttpOrigin, Origin, origin_from_url
    from cache.reader import Entry, ImageReader
    from cache.store import ImageLease, ImageState, ImageStore, StoreStats

_LAZY = {
    "ImageInfo": "cache.builder",
    "pack_directory": "cache.builder",
    "Entry": "cache.reader",
    "ImageReader": "cache.reader",
    "ImageFinder": "cache.importer",
    "install_image_importer": "cache.importer",
    "uninstall_image_importer": "cache.importer",
    "DirectoryOrigin": "cache.origin",
    "HttpOrigin": "cache.origin",
    "Origin": "cache.origin",
    "origin_from_url": "cache.origin",
    "ImageLease": "cache.store",
    "ImageState": "cache.store",
    "ImageStore": "cache.store",
    "StoreStats": "cache.store",
}

__all__ = [
    "BuildError",
    "CacheError",
    "CacheFull",
    "CorruptImage",
    "DigestMismatch",
    "DirectoryOrigin",
    "DiskFull",
    "Entry",
    "FetchError",
    "HttpOrigin",
    "ImageFinder",
    "ImageInfo",
    "ImageLease",
    "ImageNotFound",
    "ImageReader",
    "ImageState",
    "ImageStore",
    "ImageTooLarge",
    "Origin",
    "StoreStats",
    "TransientFetchError",
    "UnsupportedImage",
    "install_image_importer",
    "origin_from_url",
    "pack_directory",
    "uninstall_image_importer",
]


def __getattr__(name: str) -> object:
    module_name = _LAZY.get(name)
    if module_name is None:
        raise AttributeError(f"module 'cache' has no attribute {name!r}")
    value = getattr(importlib.import_module(module_name), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
