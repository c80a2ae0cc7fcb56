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
well (:func:`read_index`, :func:`hash_image`), so a file truncated while it
is opened or verified gives a :class:`~cache.errors.CorruptImage`, never a
fault in the daemon. Only instances read file bytes through the mapping. Files
the daemon does not own (a publish drop, a ``functions[].image`` path) are
never mapped at all: :func:`inspect_image` reads and hashes them, and the
store maps only its own private copy.

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
from itertools import pairwise

from cache import format as fmt
from cache.errors import CorruptImage, DigestMismatch, UnsupportedImage
from cache.safeio import open_regular, pread_exact

# Kept light on purpose (no typing, dataclasses, pathlib, hashlib at import):
# the importer imports this module in every function instance at start-up.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterator

# One index entry as kept after validation: kind, mode, data offset, size, digest.
_Record = tuple[int, int, int, int, bytes]
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


def normalise_lookup_path(path: str) -> str | None:
    """Turn a caller's path into index form; ``None`` if it can never be in an image.

    Lookups are lenient about spelling ("a//b", "./a", "a/", "/a") but never
    about escaping the root: any ".." component means "not here".
    """
    parts = [p for p in path.split("/") if p and p != "."]
    if ".." in parts:
        return None
    return "/".join(parts)


def path_problem(path: str) -> str | None:
    """Why ``path`` is not a valid stored path (FORMAT.md "Paths"), or ``None``."""
    if not path:
        return "is empty"
    if "\0" in path:
        return "contains NUL"
    if path.startswith("/"):
        return "is absolute"
    if len(path.encode("utf-8", "surrogatepass")) > fmt.MAX_PATH_BYTES:
        return f"is longer than {fmt.MAX_PATH_BYTES} bytes"
    for part in path.split("/"):
        if part == "":
            return "has an empty component"
        if part in (".", ".."):
            return f"has a {part!r} component"
        if len(part.encode("utf-8", "surrogatepass")) > fmt.MAX_NAME_BYTES:
            return f"has a component longer than {fmt.MAX_NAME_BYTES} bytes"
    return None


class ImageReader:
    """A validated, read-only mapping of one image. Use :meth:`open` to make one."""

    def __init__(
        self,
        path: str,
        mapping: mmap.mmap,
        header: fmt.Header,
        paths: list[str],
        records: list[_Record],
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


class ImageIndex:
    """Header and index of an image read with ``pread`` (:func:`inspect_image`): no mapping."""

    __slots__ = ("digest", "header", "paths", "records", "size")

    def __init__(self, header: fmt.Header, paths: list[str], records: list[_Record]) -> None:
        self.header = header
        self.digest = header.image_digest.hex()
        self.size = header.image_size
        self.paths = paths
        self.records = records

    def is_file(self, path: str) -> bool:
        key = normalise_lookup_path(path)
        if not key:
            return False
        i = bisect_left(self.paths, key)
        return i < len(self.paths) and self.paths[i] == key and self.records[i][0] == fmt.KIND_FILE


def inspect_image(
    path: str | os.PathLike[str], *, verify: bool = False, follow_symlinks: bool = True
) -> ImageIndex:
    """Validate an image the daemon does not own, without mapping it.

    Header and index are always checked; ``verify=True`` also hashes every
    byte. Everything is read with ``pread``: a file truncated, replaced or
    grown meanwhile is a :class:`CorruptImage`; a FIFO or device is a
    :class:`~cache.errors.NotRegularFile` (never a hang).
    """
    image_path = os.fspath(path)
    fd = open_regular(image_path, follow_symlinks=follow_symlinks)
    try:
        header, paths, records = read_index(fd, os.fstat(fd).st_size, image_path)
        if verify:
            computed = hash_image(fd, header.image_size, image_path)
            if computed != header.image_digest:
                raise DigestMismatch(
                    f"image digest mismatch: expected {header.image_digest.hex()}, "
                    f"got {computed.hex()}"
                )
    finally:
        os.close(fd)
    return ImageIndex(header, paths, records)


def read_index(
    fd: int, file_size: int, what: str = "image"
) -> tuple[fmt.Header, list[str], list[_Record]]:
    """Header and index of the image open at ``fd``, read and validated with ``pread``."""
    if file_size == 0:
        raise CorruptImage(f"truncated image: 0 bytes, header is {fmt.HEADER_SIZE} bytes")
    page = pread_exact(fd, min(file_size, fmt.HEADER_SIZE), 0, what)
    header = _check_header(page, file_size)
    index = pread_exact(fd, header.index_count * fmt.ENTRY_SIZE, header.index_offset, what)
    strtab = pread_exact(fd, header.strtab_size, header.strtab_offset, what)
    paths, records = parse_index(index, strtab, header)
    return header, paths, records


def parse_image_bytes(data: bytes) -> tuple[fmt.Header, list[str], list[_Record]]:
    """Header and index of an image held in memory (the fuzz target of the index parser)."""
    if not data:
        raise CorruptImage(f"truncated image: 0 bytes, header is {fmt.HEADER_SIZE} bytes")
    header = _check_header(data[: fmt.HEADER_SIZE], len(data))
    index_end = header.index_offset + header.index_count * fmt.ENTRY_SIZE
    strtab = data[header.strtab_offset : header.strtab_offset + header.strtab_size]
    return (header, *parse_index(data[header.index_offset : index_end], strtab, header))


def hash_image(fd: int, size: int, what: str = "image") -> bytes:
    """SHA-256 of the image at ``fd`` per FORMAT.md, streamed with ``pread``.

    A file that ends early or continues past ``size`` changed while we read it.
    """
    import hashlib  # lazily, as in verify_file

    h = hashlib.sha256(fmt.digest_header_view(pread_exact(fd, fmt.HEADER_SIZE, 0, what)))
    buf = bytearray(1 << 20)
    view = memoryview(buf)
    offset = fmt.HEADER_SIZE
    while offset < size:
        n = os.preadv(fd, [view[: min(len(buf), size - offset)]], offset)
        if n == 0:
            raise CorruptImage(
                f"{what}: file ended at {offset} bytes while {size} were expected "
                "(truncated or changed while being hashed)"
            )
        h.update(view[:n])
        offset += n
    if os.pread(fd, 1, size):
        raise CorruptImage(f"{what}: file grew past {size} bytes while being hashed")
    return h.digest()


# -- validation ------------------------------------------------------------------


def _check_header(mapping: bytes, file_size: int) -> fmt.Header:
    magic = mapping[: len(fmt.MAGIC)]
    if magic != fmt.MAGIC:
        raise CorruptImage(f"bad magic: expected {fmt.MAGIC.hex()}, got {bytes(magic).hex()}")
    if file_size < fmt.HEADER_SIZE:
        raise CorruptImage(f"truncated image: {file_size} bytes, header is {fmt.HEADER_SIZE} bytes")
    page = memoryview(mapping)[: fmt.HEADER_SIZE]
    try:
        stored, computed = fmt.stored_crc(page), fmt.header_crc(page)
        if stored != computed:
            raise CorruptImage(
                f"image header crc mismatch: stored {stored:#010x}, computed {computed:#010x}"
            )
        h = fmt.Header.unpack(page)
    finally:
        page.release()
    if h.version != fmt.FORMAT_VERSION:
        raise UnsupportedImage(
            f"unsupported format version {h.version} (this reader knows {fmt.FORMAT_VERSION})"
        )
    unknown = h.incompat_features & ~fmt.INCOMPAT_KNOWN
    if unknown:
        raise UnsupportedImage(f"unknown incompatible feature bits {unknown:#x}")
    if h.header_size != fmt.HEADER_SIZE:
        raise CorruptImage(f"header size {h.header_size}, format requires {fmt.HEADER_SIZE}")
    if h.entry_size != fmt.ENTRY_SIZE:
        raise CorruptImage(f"index entry size {h.entry_size}, format requires {fmt.ENTRY_SIZE}")
    ps = h.page_size
    if not (fmt.MIN_PAGE_SIZE <= ps <= fmt.MAX_PAGE_SIZE and ps & (ps - 1) == 0):
        raise CorruptImage(f"page size {ps} is not a power of two in [4096, 65536]")
    if file_size < h.image_size:
        raise CorruptImage(
            f"truncated image: {file_size} bytes, header says at least {h.image_size}"
        )
    if file_size > h.image_size:
        raise CorruptImage(
            f"image has {file_size - h.image_size} trailing bytes after the "
            f"{h.image_size} the header declares"
        )
    if h.index_count > fmt.MAX_ENTRIES:
        raise CorruptImage(f"index count {h.index_count} exceeds {fmt.MAX_ENTRIES}")
    if h.strtab_size > h.index_count * fmt.MAX_PATH_BYTES:
        # Each path is at most MAX_PATH_BYTES: a bigger strtab is junk we would read for nothing.
        raise CorruptImage(
            f"strtab size {h.strtab_size} exceeds {h.index_count} paths of "
            f"{fmt.MAX_PATH_BYTES} bytes"
        )
    index_end = h.index_offset + h.index_count * fmt.ENTRY_SIZE
    strtab_end = h.strtab_offset + h.strtab_size
    data_end = h.data_offset + h.data_size
    if h.index_offset < fmt.HEADER_SIZE or h.index_offset % 8:
        raise CorruptImage(f"index offset {h.index_offset} inside the header or not 8-aligned")
    if index_end > h.strtab_offset:
        raise CorruptImage(
            f"index region [{h.index_offset}, {index_end}) overlaps strtab at {h.strtab_offset}"
        )
    if strtab_end > h.data_offset:
        raise CorruptImage(
            f"strtab region [{h.strtab_offset}, {strtab_end}) overlaps data at {h.data_offset}"
        )
    if h.data_offset % ps:
        raise CorruptImage(f"data offset {h.data_offset} not aligned to page size {ps}")
    if data_end != h.image_size:
        raise CorruptImage(f"data region ends at {data_end}, image size is {h.image_size}")
    return h


def parse_index(index: bytes, strtab: bytes, h: fmt.Header) -> tuple[list[str], list[_Record]]:
    """Validate the index entries (``index``) against ``strtab`` and the header."""
    if len(index) != h.index_count * fmt.ENTRY_SIZE or len(strtab) != h.strtab_size:
        raise CorruptImage("index or strtab region lies beyond the end of the image")
    raw = fmt.ENTRY_STRUCT.iter_unpack(index)
    data_end = h.data_offset + h.data_size
    paths: list[str] = []
    records: list[_Record] = []
    kinds: dict[str, int] = {}
    ranges: list[tuple[int, int, int]] = []
    previous = ""
    for i, (p_off, p_len, kind, _flags, mode, _res, offset, size, digest) in enumerate(raw):
        where = f"index entry {i}"
        if p_off + p_len > len(strtab):
            raise CorruptImage(
                f"{where} path range [{p_off}, {p_off + p_len}) beyond strtab size {len(strtab)}"
            )
        try:
            path = strtab[p_off : p_off + p_len].decode("utf-8")
        except UnicodeDecodeError:
            raise CorruptImage(f"{where} path is not valid UTF-8") from None
        problem = path_problem(path)
        if problem:
            raise CorruptImage(f"{where} path {path!r} {problem}")
        if i and path <= previous:
            raise CorruptImage(f"{where} path {path!r} not sorted after {previous!r}")
        previous = path
        if kind not in fmt.KIND_NAMES:
            raise CorruptImage(f"{where} ({path!r}) has unknown kind {kind}")
        if mode & ~0o7777:
            raise CorruptImage(f"{where} ({path!r}) mode {mode:#o} has bits outside 0o7777")
        parent = path.rpartition("/")[0]
        if parent and kinds.get(parent) != fmt.KIND_DIR:
            raise CorruptImage(f"{where} ({path!r}) has no parent directory entry {parent!r}")
        if kind == fmt.KIND_DIR or size == 0:
            if size or offset:
                raise CorruptImage(
                    f"{where} ({path!r}) is empty or a directory but has data offset "
                    f"{offset} size {size}"
                )
        else:
            if offset % h.page_size:
                raise CorruptImage(
                    f"{where} ({path!r}) data offset {offset} not aligned to page size "
                    f"{h.page_size}"
                )
            if offset + size > h.image_size:
                raise CorruptImage(f"{where} ({path!r}) data range beyond end of file")
            if offset < h.data_offset or offset + size > data_end:
                raise CorruptImage(
                    f"{where} ({path!r}) data range [{offset}, {offset + size}) outside the "
                    f"data region [{h.data_offset}, {data_end})"
                )
            ranges.append((offset, offset + size, i))
        kinds[path] = kind
        paths.append(path)
        records.append((kind, mode, offset, size, digest))
    ranges.sort()
    for (_, end, a), (start, _, b) in pairwise(ranges):
        if start < end:
            raise CorruptImage(
                f"index entries {min(a, b)} and {max(a, b)} overlap in the data region"
            )
    return paths, records
