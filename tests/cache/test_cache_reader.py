"""ImageReader: lookups over the mapping, and every kind of corruption refused by name."""

from __future__ import annotations

import hashlib
import mmap
import shutil
import struct
from collections.abc import Callable
from pathlib import Path

import pytest
from cache_testkit import entry_offset, reseal, reseal_crc, write_spec_image

from cache.builder import ImageInfo
from cache.errors import CacheError, CorruptImage, DigestMismatch, UnsupportedImage
from cache.reader import ImageReader


def test_lookup_read_listdir(sample_image: ImageInfo) -> None:
    with ImageReader.open(sample_image.path) as reader:
        assert reader.digest == sample_image.digest
        entry = reader.lookup("pkg/data.txt")
        assert entry is not None and entry.is_file and entry.size == 21
        assert entry.digest == hashlib.sha256(b"hello from the image\n").digest()
        assert reader.lookup("pkg/nope") is None
        assert reader.lookup("../pkg/data.txt") is None
        # Lenient spelling, same entry.
        assert reader.lookup("./pkg//data.txt/") == entry
        assert bytes(reader.read("pkg/data.txt")) == b"hello from the image\n"
        assert bytes(reader.read("pkg/assets/logo.bin")) == bytes(range(256)) * 20
        assert reader.listdir("") == ["__pycache__", "bin", "handler.py", "pkg"]
        assert reader.listdir("pkg") == ["__init__.py", "__pycache__", "assets", "data.txt", "sub"]
        assert reader.is_dir("") and reader.is_dir("pkg/sub") and not reader.is_dir("handler.py")
        assert reader.is_file("handler.py") and not reader.is_file("pkg")


def test_missing_paths_raise_file_system_errors(sample_image: ImageInfo) -> None:
    with ImageReader.open(sample_image.path) as reader:
        with pytest.raises(FileNotFoundError, match=r"'pkg/missing\.txt' is not in image"):
            reader.read("pkg/missing.txt")
        with pytest.raises(IsADirectoryError):
            reader.read("pkg")
        with pytest.raises(NotADirectoryError):
            reader.listdir("handler.py")
        with pytest.raises(FileNotFoundError):
            reader.listdir("nowhere")


def test_read_is_a_zero_copy_view_of_a_read_only_shared_map(sample_image: ImageInfo) -> None:
    reader = ImageReader.open(sample_image.path)
    view = reader.read("pkg/data.txt")
    assert isinstance(view, memoryview) and view.readonly
    entry = reader.lookup("pkg/data.txt")
    assert entry is not None and entry.offset % mmap.PAGESIZE == 0
    with pytest.raises(TypeError):
        view[0] = 0
    # A live slice keeps the mapping valid even after close().
    reader.close()
    assert reader.closed
    assert bytes(view) == b"hello from the image\n"
    with pytest.raises(ValueError, match="closed"):
        reader.read("pkg/data.txt")


def test_verify_file_names_the_file(tmp_path: Path, sample_image: ImageInfo) -> None:
    data = bytearray(sample_image.path.read_bytes())
    with ImageReader.open(sample_image.path) as reader:
        entry = reader.lookup("pkg/data.txt")
        assert entry is not None
        reader.verify_file(entry)
    data[entry.offset] ^= 0x01
    broken = tmp_path / "broken.hlimg"
    broken.write_bytes(data)
    with ImageReader.open(broken, verify=False) as reader:
        bad = reader.lookup("pkg/data.txt")
        assert bad is not None
        with pytest.raises(
            DigestMismatch,
            match=rf"file 'pkg/data.txt' \(index entry {bad.index}\) digest mismatch: "
            rf"expected {entry.digest.hex()}, got [0-9a-f]{{64}}",
        ):
            reader.verify_file(bad)


def test_header_and_index_validation_is_all_a_hot_open_needs(sample_image: ImageInfo) -> None:
    with ImageReader.open(sample_image.path, verify=False) as reader:
        assert reader.digest == sample_image.digest
        reader.verify()  # the deferred check passes on a good image


# -- corruption ----------------------------------------------------------------------


def _write(tmp_path: Path, data: bytes | bytearray, name: str = "image.hlimg") -> Path:
    path = tmp_path / name
    path.write_bytes(bytes(data))
    return path


def _index_field(data: bytearray, entry: int, fmt: str, at: int, value: int) -> None:
    struct.pack_into(fmt, data, entry_offset(entry) + at, value)


Mutation = Callable[[bytearray], object]


def _flip_magic(d: bytearray) -> None:
    d[1] ^= 0xFF


def _flip_reserved_header_byte(d: bytearray) -> None:
    d[2000] ^= 0x01


def _unknown_incompat_bit(d: bytearray) -> None:
    struct.pack_into("<Q", d, 24, 0x4)
    reseal(d)


def _version_2(d: bytearray) -> None:
    struct.pack_into("<I", d, 8, 2)
    reseal(d)


def _bad_page_size(d: bytearray) -> None:
    struct.pack_into("<I", d, 16, 5000)
    reseal(d)


def _unknown_compat_bit(d: bytearray) -> None:  # must be accepted
    struct.pack_into("<Q", d, 32, 1 << 40 | 1)
    reseal(d)


def _entry_beyond_eof(d: bytearray) -> None:
    _index_field(d, 1, "<Q", 16, len(d) + 4096 * 4)
    reseal(d)


def _entry_misaligned(d: bytearray) -> None:
    offset = struct.unpack_from("<Q", d, entry_offset(1) + 16)[0]
    _index_field(d, 1, "<Q", 16, offset + 1)
    reseal(d)


def _entries_overlap(d: bytearray) -> None:
    other = struct.unpack_from("<Q", d, entry_offset(1) + 16)[0]
    _index_field(d, 3, "<Q", 16, other)
    reseal(d)


def _entry_unknown_kind(d: bytearray) -> None:
    _index_field(d, 0, "<B", 6, 3)
    reseal(d)


def _entry_mode_bits(d: bytearray) -> None:
    _index_field(d, 2, "<I", 8, 0o100644)
    reseal(d)


def _entry_path_beyond_strtab(d: bytearray) -> None:
    _index_field(d, 2, "<I", 0, 1 << 20)
    reseal(d)


def _entries_unsorted(d: bytearray) -> None:
    a, b = entry_offset(2), entry_offset(3)
    d[a : a + 64], d[b : b + 64] = d[b : b + 64], d[a : a + 64]
    reseal(d)


def _strtab_not_utf8(d: bytearray) -> None:
    strtab = struct.unpack_from("<Q", d, 64)[0]
    p_off = struct.unpack_from("<I", d, entry_offset(0))[0]
    d[strtab + p_off] = 0xFF
    reseal(d)


def _index_digest_byte(d: bytearray) -> None:
    d[entry_offset(1) + 40] ^= 0x01


def _data_byte(d: bytearray) -> None:
    offset = struct.unpack_from("<Q", d, entry_offset(1) + 16)[0]
    d[offset] ^= 0x01


def _trailing_bytes(d: bytearray) -> None:
    d += b"\0" * 10


def _reserved_header_byte_resealed_crc_only(d: bytearray) -> None:
    d[3000] = 0x7F
    reseal_crc(d)


# (mutation, error class, message pattern). The sample's index starts with
# "__pycache__" (dir), "__pycache__/handler.<tag>.pyc" (file), "bin", "bin/run.sh" (file).
CORRUPTIONS: list[tuple[str, Mutation, type[CacheError], str]] = [
    ("bad magic", _flip_magic, CorruptImage, r"^bad magic: expected 89484c494d470d0a, got 89b7"),
    ("header crc", _flip_reserved_header_byte, CorruptImage, r"^image header crc mismatch"),
    (
        "incompat bit",
        _unknown_incompat_bit,
        UnsupportedImage,
        r"^unknown incompatible feature bits 0x4$",
    ),
    ("version", _version_2, UnsupportedImage, r"^unsupported format version 2"),
    ("page size", _bad_page_size, CorruptImage, r"^page size 5000 is not a power of two"),
    (
        "entry beyond eof",
        _entry_beyond_eof,
        CorruptImage,
        r"^index entry 1 \('__pycache__/handler\..*\.pyc'\) data range beyond end of file$",
    ),
    (
        "entry misaligned",
        _entry_misaligned,
        CorruptImage,
        r"^index entry 1 .* not aligned to page size 4096$",
    ),
    (
        "entries overlap",
        _entries_overlap,
        CorruptImage,
        r"^index entries 1 and 3 overlap in the data region$",
    ),
    (
        "unknown kind",
        _entry_unknown_kind,
        CorruptImage,
        r"^index entry 0 \('__pycache__'\) has unknown kind 3$",
    ),
    ("mode bits", _entry_mode_bits, CorruptImage, r"^index entry 2 \('bin'\) mode 0o100644"),
    (
        "path beyond strtab",
        _entry_path_beyond_strtab,
        CorruptImage,
        r"^index entry 2 path range \[1048576, 1048579\) beyond strtab size",
    ),
    (
        "unsorted",
        _entries_unsorted,
        CorruptImage,
        r"^index entry 2 \('bin/run.sh'\) has no parent"
        r"|^index entry 3 path 'bin' not sorted after 'bin/run.sh'$",
    ),
    ("non-utf8 path", _strtab_not_utf8, CorruptImage, r"^index entry 0 path is not valid UTF-8$"),
    (
        "index digest byte",
        _index_digest_byte,
        DigestMismatch,
        r"^image digest mismatch: expected [0-9a-f]{64}, got [0-9a-f]{64}$",
    ),
    ("data byte", _data_byte, DigestMismatch, r"^image digest mismatch: expected"),
    (
        "trailing bytes",
        _trailing_bytes,
        CorruptImage,
        r"^image has 10 trailing bytes after the \d+ the header declares$",
    ),
    (
        "reserved header byte",
        _reserved_header_byte_resealed_crc_only,
        DigestMismatch,
        r"^image digest mismatch",
    ),
]


@pytest.mark.parametrize(
    ("mutate", "error", "pattern"),
    [pytest.param(m, e, p, id=name) for name, m, e, p in CORRUPTIONS],
)
def test_corruption_is_refused_with_its_name(
    tmp_path: Path,
    sample_image: ImageInfo,
    mutate: Mutation,
    error: type[CacheError],
    pattern: str,
) -> None:
    data = bytearray(sample_image.path.read_bytes())
    mutate(data)
    # Not under the content-addressed name: resealed images have a new digest.
    path = _write(tmp_path, data)
    with pytest.raises(error, match=pattern) as caught:
        ImageReader.open(path)
    assert type(caught.value) is error


def test_unknown_compat_bits_are_ignored(tmp_path: Path, sample_image: ImageInfo) -> None:
    data = bytearray(sample_image.path.read_bytes())
    _unknown_compat_bit(data)
    with ImageReader.open(_write(tmp_path, data)) as reader:
        assert reader.is_file("handler.py")


@pytest.mark.parametrize("size", [0, 5, 100, 4095])
def test_truncated_below_the_header_page(
    tmp_path: Path, sample_image: ImageInfo, size: int
) -> None:
    data = sample_image.path.read_bytes()[:size]
    expected = f"truncated image: {size} bytes, header is 4096"
    if 0 < size < 8:
        expected = "bad magic"
    with pytest.raises(CorruptImage, match=expected):
        ImageReader.open(_write(tmp_path, data))


def test_truncated_body(tmp_path: Path, sample_image: ImageInfo) -> None:
    data = sample_image.path.read_bytes()
    cut = len(data) - 4096 - 17
    with pytest.raises(
        CorruptImage, match=rf"^truncated image: {cut} bytes, header says at least {len(data)}$"
    ):
        ImageReader.open(_write(tmp_path, data[:cut]))


def test_wrong_expected_digest(sample_image: ImageInfo) -> None:
    wrong = "0" * 64
    with pytest.raises(
        DigestMismatch, match=rf"^image digest mismatch: expected {wrong}, header says "
    ):
        ImageReader.open(sample_image.path, expected_digest=wrong)
    with pytest.raises(ValueError, match="not 64 lowercase hex digits"):
        ImageReader.open(sample_image.path, expected_digest="ABC")


def test_file_name_digest_must_match(tmp_path: Path, sample_image: ImageInfo) -> None:
    impostor = tmp_path / f"{'ab' * 32}.hlimg"
    shutil.copyfile(sample_image.path, impostor)
    with pytest.raises(DigestMismatch, match=f"expected {'ab' * 32}"):
        ImageReader.open(impostor, verify=False)


def test_flipped_data_byte_passes_a_hot_open_but_not_verify(
    tmp_path: Path, sample_image: ImageInfo
) -> None:
    data = bytearray(sample_image.path.read_bytes())
    _data_byte(data)
    path = _write(tmp_path, data)
    # Documented: a hot open hashes no bytes; verify() is the deferred check.
    with (
        ImageReader.open(path, verify=False) as reader,
        pytest.raises(DigestMismatch, match="image digest mismatch"),
    ):
        reader.verify()


@pytest.mark.parametrize(
    ("replacement", "problem"),
    [
        (b"..", r"'\.\.' has a '\.\.' component"),
        (b"/x", r"'/x' is absolute"),
        (b"a\0", r"'a\\x00' contains NUL"),
        (b"./", r"'\./' has a '\.' component"),
    ],
)
def test_unnormalised_stored_paths_are_refused(
    tmp_path: Path, replacement: bytes, problem: str
) -> None:
    path = write_spec_image(tmp_path, {"ab/c.txt": b"x"})
    data = bytearray(path.read_bytes())
    strtab = struct.unpack_from("<Q", data, 64)[0]
    data[strtab : strtab + 2] = replacement  # entry 0 is "ab", first in the strtab
    reseal(data)
    with pytest.raises(CorruptImage, match=rf"^index entry 0 path {problem}$"):
        ImageReader.open(_write(tmp_path, data, "x.hlimg"))


def test_missing_parent_directory_entry(tmp_path: Path) -> None:
    path = write_spec_image(tmp_path, {"a/b.txt": b"x"})
    data = bytearray(path.read_bytes())
    # Turn the "a" dir entry into "A": sorts first, and "a/b.txt" loses its parent.
    strtab = struct.unpack_from("<Q", data, 64)[0]
    data[strtab] = ord("A")
    reseal(data)
    with pytest.raises(CorruptImage, match=r"index entry 1 \('a/b.txt'\) has no parent"):
        ImageReader.open(_write(tmp_path, data, "x.hlimg"))


def test_a_directory_is_not_an_image(tmp_path: Path) -> None:
    with pytest.raises(CorruptImage, match="is a directory, not a regular file"):
        ImageReader.open(tmp_path)


def test_closed_mapping_is_released(sample_image: ImageInfo) -> None:
    reader = ImageReader.open(sample_image.path)
    reader.close()
    reader.close()  # idempotent
    assert reader.closed
