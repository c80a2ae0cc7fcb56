"""Typed errors of the package cache. One base class: :class:`CacheError`.

Each message names exactly what is wrong (which header field, which index
entry, which digest), because an operator reads it in a log long after the
bytes that caused it are gone.
"""

from __future__ import annotations


class CacheError(Exception):
    """Base of every error raised by the ``cache`` package."""


class CorruptImage(CacheError):
    """An image's bytes contradict the format: bad magic, crc, layout or index."""


class UnsupportedImage(CacheError):
    """A well-formed image this reader cannot use (newer version, unknown feature bits)."""


class DigestMismatch(CorruptImage):
    """An image or file hashes to something other than the digest it must have."""


class NotRegularFile(CorruptImage):
    """A path that must be an image file is a FIFO, device, socket, directory or symlink."""


class BuildError(CacheError):
    """A source tree cannot be packed (unsafe symlink, bad name, changing file)."""


class FetchError(CacheError):
    """An image could not be fetched from its origin."""


class TransientFetchError(FetchError):
    """A fetch failure worth retrying: connection trouble, timeout, 5xx."""


class ImageNotFound(FetchError):
    """The origin does not have the requested image."""


class ImageTooLarge(FetchError):
    """The image exceeds the size limit of a transfer or of the store."""


class CacheFull(CacheError):
    """The store cannot make room: every image that would have to go is in use."""


class DiskFull(CacheFull):
    """The file system ran out of space (ENOSPC) while writing an image."""
