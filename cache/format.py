"""Byte layout of a package image (``.hlimg``), shared by the builder and the reader.

This module is the executable half of ``cache/FORMAT.md``: struct layouts,
constants and the digest rule. It only encodes and decodes; every judgement
about whether an image is acceptable lives in :mod:`cache.reader`.

It imports nothing heavy on purpose: the importer (and so every function
instance at start-up) depends on it.
"""

from __future__ import annotations

import struct
import zlib

# Not ``from typing import TYPE_CHECKING``: importing typing costs ~8 ms, and
# type checkers treat any constant named TYPE_CHECKING as true.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Final

MAGIC: Final = b"\x89HLIMG\r\n"
FORMAT_VERSION: Final = 1
HEADER_SIZE: Final = 4096
DEFAULT_PAGE_SIZE: Final = 4096
MIN_PAGE_SIZE: Final = 4096
MAX_PAGE_SIZE: Final = 65536
IMAGE_SUFFIX: Final = ".hlimg"

# Feature bits. An *incompatible* bit changes how bytes must be read, so a
# reader refuses any it does not know (the EROFS rule); a *compatible* bit
# only announces something a reader may ignore.
INCOMPAT_KNOWN: Final = 0
COMPAT_BYTECODE: Final = 1 << 0  # __pycache__/*.<cache_tag>.pyc entries are present

KIND_FILE: Final = 1
KIND_DIR: Final = 2
KIND_NAMES: Final = {KIND_FILE: "file", KIND_DIR: "dir"}

MODE_FILE: Final = 0o644
MODE_EXEC: Final = 0o755
MODE_DIR: Final = 0o755

MAX_PATH_BYTES: Final = 4096
MAX_NAME_BYTES: Final = 255
MAX_ENTRIES: Final = 1_000_000

# Little-endian throughout: every host this runs on is, and a fixed order lets a
# reader in another language use the table in FORMAT.md verbatim.
HEADER_STRUCT: Final = struct.Struct("<8sIIII QQ Q QQ QQ QQ 4s4s16s32s")
DIGEST_OFFSET: Final = 120
DIGEST_SIZE: Final = 32
CRC_OFFSET: Final = HEADER_SIZE - 4
CRC_STRUCT: Final = struct.Struct("<I")

ENTRY_STRUCT: Final = struct.Struct("<IHBBII QQ 32s")
ENTRY_SIZE: Final = ENTRY_STRUCT.size
ZERO_DIGEST: Final = bytes(DIGEST_SIZE)

assert HEADER_STRUCT.size == DIGEST_OFFSET + DIGEST_SIZE
assert ENTRY_SIZE == 64


_HEADER_FIELDS: Final = (
    "magic",
    "version",
    "header_size",
    "page_size",
    "entry_size",
    "incompat_features",
    "compat_features",
    "image_size",
    "index_offset",
    "index_count",
    "strtab_offset",
    "strtab_size",
    "data_offset",
    "data_size",
    "pyc_magic",
    "reserved0",
    "cache_tag",
    "image_digest",
)


class Header:
    """The decoded fields of the header page (see FORMAT.md, "Header page").

    A plain slotted class rather than a dataclass: ``dataclasses`` pulls in
    ``inspect`` and ``re``, which the importer cannot afford at instance start.
    """

    __slots__ = _HEADER_FIELDS

    magic: bytes
    version: int
    header_size: int
    page_size: int
    entry_size: int
    incompat_features: int
    compat_features: int
    image_size: int
    index_offset: int
    index_count: int
    strtab_offset: int
    strtab_size: int
    data_offset: int
    data_size: int
    pyc_magic: bytes
    reserved0: bytes
    cache_tag: bytes
    image_digest: bytes

    def __init__(self, **fields: int | bytes) -> None:
        if set(fields) != set(_HEADER_FIELDS):
            raise TypeError(f"Header needs exactly the fields {_HEADER_FIELDS}")
        for name, value in fields.items():
            object.__setattr__(self, name, value)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("Header is immutable; use replace()")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Header) and self.values() == other.values()

    def __hash__(self) -> int:
        return hash(self.values())

    def __repr__(self) -> str:
        return (
            f"Header(version={self.version}, image_size={self.image_size}, "
            f"index_count={self.index_count}, digest={self.image_digest.hex()})"
        )

    def values(self) -> tuple[int | bytes, ...]:
        return tuple(getattr(self, name) for name in _HEADER_FIELDS)

    def replace(self, **changes: int | bytes) -> Header:
        fields = dict(zip(_HEADER_FIELDS, self.values(), strict=True))
        fields.update(changes)
        return Header(**fields)

    def pack(self) -> bytes:
        """Return the full 4096-byte header page, crc included."""
        page = bytearray(HEADER_SIZE)
        HEADER_STRUCT.pack_into(page, 0, *self.values())
        CRC_STRUCT.pack_into(page, CRC_OFFSET, header_crc(page))
        return bytes(page)

    @classmethod
    def unpack(cls, page: bytes | memoryview) -> Header:
        return cls(**dict(zip(_HEADER_FIELDS, HEADER_STRUCT.unpack_from(page, 0), strict=True)))

    @property
    def cache_tag_str(self) -> str:
        return self.cache_tag.rstrip(b"\0").decode("ascii", "replace")


def header_crc(page: bytes | bytearray | memoryview) -> int:
    """CRC-32 (zlib polynomial) of header bytes [0, 4092)."""
    return zlib.crc32(page[:CRC_OFFSET])


def stored_crc(page: bytes | bytearray | memoryview) -> int:
    return int(CRC_STRUCT.unpack_from(page, CRC_OFFSET)[0])


def digest_header_view(page: bytes | bytearray | memoryview) -> bytes:
    """The header page as the image digest sees it: digest and crc fields zeroed.

    Zeroing (rather than skipping the header) makes the content address cover
    every header field, so two images with the same name cannot differ in, say,
    their feature bits.
    """
    buf = bytearray(page[:HEADER_SIZE])
    buf[DIGEST_OFFSET : DIGEST_OFFSET + DIGEST_SIZE] = ZERO_DIGEST
    buf[CRC_OFFSET:HEADER_SIZE] = b"\0\0\0\0"
    return bytes(buf)


def image_digest(data: bytes | memoryview, chunk: int = 1 << 20) -> bytes:
    """SHA-256 of a whole image held in memory (or a mapping), per FORMAT.md."""
    import hashlib  # lazily: OpenSSL costs ~2 ms at import and hot opens never hash

    h = hashlib.sha256(digest_header_view(data))
    view = memoryview(data)
    for start in range(HEADER_SIZE, len(view), chunk):
        h.update(view[start : start + chunk])
    return h.digest()


def align_up(value: int, alignment: int) -> int:
    return (value + alignment - 1) // alignment * alignment


def image_file_name(digest_hex: str) -> str:
    """The content-addressed file name of an image: ``<sha256 hex>.hlimg``."""
    return digest_hex + IMAGE_SUFFIX


def is_digest_hex(text: str) -> bool:
    """True if ``text`` is 64 lowercase hex digits (the only spelling we accept)."""
    return len(text) == 64 and all(c in "0123456789abcdef" for c in text)


def pyc_path_for(source_path: str, cache_tag: str) -> str | None:
    """Image path of the bytecode for ``pkg/mod.py``: ``pkg/__pycache__/mod.<tag>.pyc``."""
    if not source_path.endswith(".py"):
        return None
    head, _, name = source_path.rpartition("/")
    pyc = f"__pycache__/{name[:-3]}.{cache_tag}.pyc"
    return f"{head}/{pyc}" if head else pyc
