"""Map a package image read-only and look files up in it without copying.

:class:`ImageReader` maps the whole file ``PROT_READ, MAP_SHARED`` so every
instance on the host shares one copy in the page cache, validates the header
and index (cheap: proportional to the number of entries, not to the bytes),
optionally hashes the whole image (proportional to the bytes), and then
serves ``memoryview`` slices of the mapping.

Images must never be modified or truncated in place (the store only renames
and unlinks them): a mapping over a file that shrinks faults with SIGBUS.
So :meth:`ImageReader.open` never *touches* the mapping itself: header and
index are read with ``pread`` and ``verify=True`` hashes through ``pread`` as
well (:mod:`cache.validate`), so a file truncated while it
is opened or verified gives a :class:`~cache.errors.CorruptImage`, never a
fault in the daemon. Only instances read file bytes through the mapping. Files
the daemon does not own (a publish drop, a ``functions[].image`` path) are
never mapped at all: :func:`cache.validate.inspect_image` reads and hashes
them, and the store maps only its own private copy.

Every refusal is a :class:`~cache.errors.CacheError` whose message names the
field or entry at fault. Asking for a path that is not in a valid image is not
a cache error: it raises the ``OSError`` subclass a file system would
(``FileNotFoundError``, ``IsADirectoryError``, ``NotADirectoryError``).
"""

from __future__ import annotations

import importlib._bootstrap_external
import mmap
import os
import sys
from bisect import bisect_left

from cache import format as fmt
from cache.errors import CorruptImage, DigestMismatch
from cache.safeio import open_regular
from cache.validate import Record, hash_image, normalise_lookup_path, read_index

# Kept light on purpose (no typing, dataclasses, pathlib, hashlib at import):
# the importer imports this module in every function instance at start-up.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterator

# The pyc magic of this interpreter. importlib.util re-exports it but costs
# ~6 ms to import; the frozen bootstrap module is already loaded.
MAGIC_NUMBER: bytes = importlib._bootstrap_external.MAGIC_NUMBER


class Entry:
    """One index entry: a file or a directory inside the image (read-only by convention)."""

    __slots__ = ("digest", "index", "kind", "mode", "offset", "path", "size")

    def __init__(
        self, index: int, path: str, kind: int, mode: int, offset: int, size: int, digest: bytes
    ) -> None:
        self.index = index
        self.path = path
        self.kind = kind
        self.mode = mode
        self.offset = offset
        self.size = size
        self.digest = digest

    def __repr__(self) -> str:
        kind = fmt.KIND_NAMES.get(self.kind, str(self.kind))
        return f"Entry({self.index}, {self.path!r}, {kind}, {self.mode:#o}, size={self.size})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Entry) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def _key(self) -> tuple[int, str, int, int, int, int, bytes]:
        return (self.index, self.path, self.kind, self.mode, self.offset, self.size, self.digest)

    @property
    def is_dir(self) -> bool:
        return self.kind == fmt.KIND_DIR

    @property
    def is_file(self) -> bool:
        return self.kind == fmt.KIND_FILE

    @property
    def name(self) -> str:
        return self.path.rpartition("/")[2]

    @property
    def digest_hex(self) -> str:
        return self.digest.hex()


class ImageReader:
    """A validated, read-only mapping of one image. Use :meth:`open` to make one."""

    def __init__(
        self,
        path: str,
        mapping: mmap.mmap,
        header: fmt.Header,
        paths: list[str],
        records: list[Record],
    ) -> None:
        self.path = path
        self.header = header
        self.digest = header.image_digest.hex()
        self.size = header.image_size
        self._mmap: mmap.mmap | None = mapping
        self._view = memoryview(mapping)
        self._paths = paths
        self._records = records
        # Stored bytecode is only worth loading when this very interpreter made
        # it; otherwise the importer compiles the source from the map instead.
        self.bytecode_usable = (
            bool(header.compat_features & fmt.COMPAT_BYTECODE)
            and header.pyc_magic == MAGIC_NUMBER
            and header.cache_tag_str == sys.implementation.cache_tag
        )

    # -- opening -----------------------------------------------------------------

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        *,
        expected_digest: str | None = None,
        verify: bool = True,
        expected_identity: tuple[int, int] | None = None,
    ) -> ImageReader:
        """Map ``path`` and validate it.

        ``expected_identity`` is ``(inode, size)`` recorded when the store
        installed the file: a file replaced or resized since (a ``cp`` over it,
        a truncation) is refused with :class:`ImageChanged` before it is mapped.

        ``expected_digest`` (hex) defaults to the digest in the file name when
        the name is ``<sha256 hex>.hlimg``. Header and index are always
        validated (~0.2 ms for a 120-entry image here); ``verify=True`` also
        hashes every byte (~0.6 ms per MB, 1.6 GB/s with OpenSSL here), which
        the disk store does on install and scrub so that hot opens can pass
        ``verify=False``.
        """
        image_path = os.fspath(path)
        if expected_digest is None:
            name = os.path.basename(image_path)
            stem = name.removesuffix(fmt.IMAGE_SUFFIX)
            if name.endswith(fmt.IMAGE_SUFFIX) and fmt.is_digest_hex(stem):
                expected_digest = stem
        elif not fmt.is_digest_hex(expected_digest):
            raise ValueError(f"expected_digest is not 64 lowercase hex digits: {expected_digest!r}")

        fd = open_regular(image_path)  # never blocks on a FIFO, refuses devices
        try:
            st = os.fstat(fd)
            if expected_identity is not None and (st.st_ino, st.st_size) != expected_identity:
                raise ImageChanged(
                    f"{image_path} changed on disk since it was installed (inode, size "
                    f"{(st.st_ino, st.st_size)}, expected {expected_identity})"
                )
            header, paths, records = read_index(fd, st.st_size, image_path)
            if expected_digest is not None and header.image_digest.hex() != expected_digest:
                raise DigestMismatch(
                    f"image digest mismatch: expected {expected_digest}, "
                    f"header says {header.image_digest.hex()}"
                )
            if verify:
                computed = hash_image(fd, header.image_size, image_path).hex()
                if computed != header.image_digest.hex():
                    raise DigestMismatch(
                        f"image digest mismatch: expected {header.image_digest.hex()}, "
                        f"got {computed}"
                    )
            mapping = mmap.mmap(fd, 0, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ)
        finally:
            os.close(fd)
        return cls(image_path, mapping, header, paths, records)

    def verify(self) -> None:
        """Hash the whole image through the mapping and compare with the header digest.

        For instances, which own their mapping's fate; the daemon verifies with
        ``open(verify=True)`` (``pread``), which cannot fault on a truncated file.
        """
        computed = fmt.image_digest(self._mapped_view()).hex()
        if computed != self.digest:
            raise DigestMismatch(f"image digest mismatch: expected {self.digest}, got {computed}")

    def close(self) -> None:
        """Unmap, unless slices handed out by :meth:`read` are still alive.

        A live ``memoryview`` pins the mapping; in that case the map goes away
        when the last slice is garbage-collected, and this reader is closed
        either way.
        """
        if self._mmap is None:
            return
        self._view.release()
        try:
            self._mmap.close()
        except BufferError:
            pass
        self._mmap = None

    @property
    def closed(self) -> bool:
        return self._mmap is None

    def __enter__(self) -> ImageReader:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __len__(self) -> int:
        return len(self._paths)

    def __repr__(self) -> str:
        return f"<ImageReader {self.digest[:12]} {len(self)} entries {self.path}>"

    # -- lookups -----------------------------------------------------------------

    def lookup(self, path: str) -> Entry | None:
        """The entry stored at ``path`` (binary search), or ``None``."""
        key = normalise_lookup_path(path)
        if not key:
            return None
        i = bisect_left(self._paths, key)
        if i < len(self._paths) and self._paths[i] == key:
            return self._entry(i)
        return None

    def read(self, path: str) -> memoryview:
        """Zero-copy view of a file's bytes. Valid until :meth:`close`."""
        entry = self.lookup(path)
        if entry is None:
            raise FileNotFoundError(f"{path!r} is not in image {self.digest}")
        return self.read_entry(entry)

    def read_entry(self, entry: Entry) -> memoryview:
        if entry.is_dir:
            raise IsADirectoryError(f"{entry.path!r} is a directory in image {self.digest}")
        return self._mapped_view()[entry.offset : entry.offset + entry.size]

    def is_dir(self, path: str) -> bool:
        key = normalise_lookup_path(path)
        if key == "":
            return True
        entry = self.lookup(path) if key is not None else None
        return entry is not None and entry.is_dir

    def is_file(self, path: str) -> bool:
        entry = self.lookup(path)
        return entry is not None and entry.is_file

    def listdir(self, path: str = "") -> list[str]:
        """Names directly inside directory ``path`` ("" is the root), sorted."""
        key = normalise_lookup_path(path)
        if key is None:
            raise FileNotFoundError(f"{path!r} is not in image {self.digest}")
        if key:
            entry = self.lookup(key)
            if entry is None:
                raise FileNotFoundError(f"{path!r} is not in image {self.digest}")
            if not entry.is_dir:
                raise NotADirectoryError(f"{path!r} is a file in image {self.digest}")
        prefix = key + "/" if key else ""
        # All paths under a prefix are contiguous in byte order; direct children
        # are the ones without a further "/".
        names = []
        i = bisect_left(self._paths, prefix) if prefix else 0
        while i < len(self._paths) and self._paths[i].startswith(prefix):
            rest = self._paths[i][len(prefix) :]
            if "/" not in rest:
                names.append(rest)
            i += 1
        return names

    def entries(self) -> Iterator[Entry]:
        """Every entry in index (path) order."""
        for i in range(len(self._paths)):
            yield self._entry(i)

    def verify_file(self, entry: Entry) -> None:
        """Hash one file's bytes and compare with its index digest."""
        import hashlib  # lazily: ~2 ms at import, and most instances never verify

        if entry.is_dir:
            return
        computed = hashlib.sha256(self.read_entry(entry)).digest()
        if computed != entry.digest:
            raise DigestMismatch(
                f"file {entry.path!r} (index entry {entry.index}) digest mismatch: "
                f"expected {entry.digest.hex()}, got {computed.hex()}"
            )

    def _entry(self, i: int) -> Entry:
        kind, mode, offset, size, digest = self._records[i]
        return Entry(i, self._paths[i], kind, mode, offset, size, digest)

    def _mapped_view(self) -> memoryview:
        if self._mmap is None:
            raise ValueError(f"image reader for {self.path} is closed")
        return self._view


class ImageChanged(CorruptImage):
    """An installed image is no longer the file the store installed (replaced or resized)."""
