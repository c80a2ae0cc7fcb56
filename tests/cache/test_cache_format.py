"""The byte layout: builder output matches FORMAT.md, and the spec alone suffices to write."""

from __future__ import annotations

import hashlib
import struct
import zlib
from pathlib import Path

from cache_testkit import reseal, write_spec_image

from cache import format as fmt
from cache.builder import ImageInfo
from cache.reader import ImageReader


def test_builder_header_matches_the_spec_table(sample_image: ImageInfo) -> None:
    data = sample_image.path.read_bytes()
    (
        magic,
        version,
        header_size,
        page_size,
        entry_size,
        incompat,
        compat,
        image_size,
        index_offset,
        count,
        strtab_offset,
        strtab_size,
        data_offset,
        data_size,
        pyc_magic,
        _reserved,
        cache_tag,
        digest,
    ) = struct.unpack_from("<8sIIIIQQQQQQQQQ4s4s16s32s", data, 0)
    assert magic == b"\x89HLIMG\r\n"
    assert (version, header_size, page_size, entry_size) == (1, 4096, 4096, 64)
    assert incompat == 0
    assert compat == fmt.COMPAT_BYTECODE
    assert image_size == len(data) == sample_image.size
    assert index_offset == 4096
    assert strtab_offset == index_offset + 64 * count
    assert data_offset % 4096 == 0 and data_offset >= strtab_offset + strtab_size
    assert data_offset + data_size == image_size
    assert pyc_magic == fmt_magic()
    assert cache_tag.rstrip(b"\0").decode() == cache_tag_now()
    assert data[152:4092] == bytes(3940)
    assert struct.unpack_from("<I", data, 4092)[0] == zlib.crc32(data[:4092])
    assert digest.hex() == sample_image.digest
    assert sample_image.path.name == f"{sample_image.digest}.hlimg"


def test_image_digest_zeroes_digest_and_crc_fields(sample_image: ImageInfo) -> None:
    data = bytearray(sample_image.path.read_bytes())
    header = bytearray(data[:4096])
    header[120:152] = bytes(32)
    header[4092:4096] = bytes(4)
    expected = hashlib.sha256(bytes(header) + bytes(data[4096:])).hexdigest()
    assert expected == sample_image.digest
    assert fmt.image_digest(bytes(data)).hex() == sample_image.digest


def test_index_entries_follow_the_spec(sample_image: ImageInfo) -> None:
    data = sample_image.path.read_bytes()
    count = struct.unpack_from("<Q", data, 56)[0]
    strtab_offset = struct.unpack_from("<Q", data, 64)[0]
    paths = []
    for i in range(count):
        p_off, p_len, kind, flags, mode, _res, offset, size, digest = struct.unpack_from(
            "<IHBBIIQQ32s", data, 4096 + 64 * i
        )
        path = data[strtab_offset + p_off : strtab_offset + p_off + p_len].decode()
        paths.append(path.encode())
        assert flags == 0
        if kind == 2:
            assert (mode, offset, size, digest) == (0o755, 0, 0, bytes(32))
        else:
            assert kind == 1
            assert mode in (0o644, 0o755)
            assert offset % 4096 == 0
            assert hashlib.sha256(data[offset : offset + size]).digest() == digest
    assert paths == sorted(paths)


def test_a_spec_only_writer_produces_images_the_reader_accepts(tmp_path: Path) -> None:
    path = write_spec_image(tmp_path, {"a/b.txt": b"bee", "a/empty": b"", "c.py": b"x = 1\n"})
    with ImageReader.open(path) as reader:
        assert reader.listdir("") == ["a", "c.py"]
        assert bytes(reader.read("a/b.txt")) == b"bee"
        assert bytes(reader.read("a/empty")) == b""
        assert not reader.bytecode_usable


def test_header_pack_unpack_round_trip(sample_image: ImageInfo) -> None:
    page = sample_image.path.read_bytes()[:4096]
    header = fmt.Header.unpack(page)
    assert header.pack() == page
    changed = header.replace(compat_features=0)
    assert changed != header and changed.compat_features == 0
    assert fmt.Header.unpack(changed.pack()) == changed


def test_reseal_helper_agrees_with_the_builder(sample_image: ImageInfo) -> None:
    data = sample_image.path.read_bytes()
    assert bytes(reseal(bytearray(data))) == data


def test_pyc_path_for() -> None:
    assert fmt.pyc_path_for("pkg/mod.py", "cpython-311") == "pkg/__pycache__/mod.cpython-311.pyc"
    assert fmt.pyc_path_for("top.py", "t") == "__pycache__/top.t.pyc"
    assert fmt.pyc_path_for("data.txt", "t") is None


def fmt_magic() -> bytes:
    from importlib.util import MAGIC_NUMBER

    return MAGIC_NUMBER


def cache_tag_now() -> str:
    import sys

    return sys.implementation.cache_tag
