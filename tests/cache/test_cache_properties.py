"""Property tests: random trees round-trip; any damaged byte is refused, never crashes."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
from cache_testkit import make_tree
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cache.builder import pack_directory
from cache.errors import CacheError
from cache.reader import ImageReader

_NAME = st.text(alphabet=st.sampled_from("abcxyz019_-.é文"), min_size=1, max_size=12).filter(
    lambda n: (
        n not in (".", "..", ".git", ".hg", ".svn", "__pycache__")
        and not n.endswith((".pyc", ".pyo"))
    )
)

_CONTENT = st.one_of(
    st.binary(max_size=300),
    st.binary(min_size=4000, max_size=9000),  # spans pages
    st.sampled_from([b"X = 1\n", b"def f():\n    return 2\n"]),
)

# A tree: name → file content, or name → subtree.
_TREE = st.recursive(
    st.dictionaries(_NAME, _CONTENT, max_size=4),
    lambda children: st.dictionaries(_NAME, st.one_of(_CONTENT, children), max_size=4),
    max_leaves=12,
)


def _flatten(tree: dict, prefix: str = "") -> dict[str, bytes | str]:
    files: dict[str, bytes | str] = {}
    for name, value in tree.items():
        if isinstance(value, dict):
            files[f"{prefix}{name}/"] = b""
            files.update(_flatten(value, f"{prefix}{name}/"))
        else:
            files[f"{prefix}{name}"] = value
    return files


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tree=_TREE)
def test_random_trees_round_trip(tree: dict) -> None:
    files = _flatten(tree)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "src"
        root.mkdir()
        make_tree(root, files)
        info = pack_directory(root, Path(tmp))
        again = pack_directory(root, Path(tmp) / "again.hlimg")
        assert again.digest == info.digest
        with ImageReader.open(info.path) as reader:
            for rel, content in files.items():
                if rel.endswith("/"):
                    assert reader.is_dir(rel)
                    expected = sorted(os.listdir(root / rel))
                    listed = [n for n in reader.listdir(rel) if n != "__pycache__"]
                    assert listed == expected
                else:
                    entry = reader.lookup(rel)
                    assert entry is not None
                    assert bytes(reader.read(rel)) == content
                    reader.verify_file(entry)


@pytest.fixture(scope="module")
def damaged_source(tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, Path]:
    scratch = tmp_path_factory.mktemp("damage")
    src = make_tree(
        scratch / "src",
        {"a.py": "A = 1\n", "pkg/__init__.py": "", "pkg/data.bin": bytes(range(200))},
    )
    return pack_directory(src, scratch).path.read_bytes(), scratch


@settings(max_examples=300, deadline=None)
@given(position=st.integers(min_value=0), flip=st.integers(min_value=1, max_value=255))
def test_any_damaged_byte_is_refused_with_a_cache_error(
    damaged_source: tuple[bytes, Path], position: int, flip: int
) -> None:
    image, scratch = damaged_source
    data = bytearray(image)
    data[position % len(data)] ^= flip
    path = scratch / "damaged.hlimg"
    path.write_bytes(data)
    # Every byte is covered by the crc or the digest: a full open must refuse.
    try:
        ImageReader.open(path).close()
    except CacheError:
        pass
    else:
        raise AssertionError(f"damage at byte {position % len(data)} went unnoticed")
    # A hot open may accept damage outside header and index, but must never
    # fail with anything but a CacheError (no IndexError, struct.error, ...).
    try:
        ImageReader.open(path, verify=False).close()
    except CacheError:
        pass
