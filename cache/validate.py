"""Read and validate a package image with ``pread``, never mapping it.

The header and index checks (every offset, size, path and alignment rule of
FORMAT.md), the whole-image hash, and :func:`inspect_image` for files the
daemon does not own (a publish drop, a ``functions[].image`` path). A file
truncated, replaced or grown while it is read is a
:class:`~cache.errors.CorruptImage`, never a fault: nothing here touches a
mapping. :class:`~cache.reader.ImageReader` opens images through these checks
before it maps them.

Kept as light as :mod:`cache.reader` (no typing, dataclasses, pathlib, hashlib
at import): function instances import it at start-up.
"""

from __future__ import annotations

import os
from bisect import bisect_left
from itertools import pairwise

from cache import format as fmt
from cache.errors import CorruptImage, DigestMismatch, UnsupportedImage
from cache.safeio import open_regular, pread_exact

# One index entry as kept after validation: kind, mode, data offset, size, digest.
Record = tuple[int, int, int, int, bytes]


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


class ImageIndex:
    """Header and index of an image read with ``pread`` (:func:`inspect_image`): no mapping."""

    __slots__ = ("digest", "header", "paths", "records", "size")

    def __init__(self, header: fmt.Header, paths: list[str], records: list[Record]) -> None:
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
) -> tuple[fmt.Header, list[str], list[Record]]:
    """Header and index of the image open at ``fd``, read and validated with ``pread``."""
    if file_size == 0:
        raise CorruptImage(f"truncated image: 0 bytes, header is {fmt.HEADER_SIZE} bytes")
    page = pread_exact(fd, min(file_size, fmt.HEADER_SIZE), 0, what)
    header = _check_header(page, file_size)
    index = pread_exact(fd, header.index_count * fmt.ENTRY_SIZE, header.index_offset, what)
    strtab = pread_exact(fd, header.strtab_size, header.strtab_offset, what)
    paths, records = parse_index(index, strtab, header)
    return header, paths, records


def parse_image_bytes(data: bytes) -> tuple[fmt.Header, list[str], list[Record]]:
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


def parse_index(index: bytes, strtab: bytes, h: fmt.Header) -> tuple[list[str], list[Record]]:
    """Validate the index entries (``index``) against ``strtab`` and the header."""
    if len(index) != h.index_count * fmt.ENTRY_SIZE or len(strtab) != h.strtab_size:
        raise CorruptImage("index or strtab region lies beyond the end of the image")
    raw = fmt.ENTRY_STRUCT.iter_unpack(index)
    data_end = h.data_offset + h.data_size
    paths: list[str] = []
    records: list[Record] = []
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
