"""Fixtures shared by the cache tests."""

from __future__ import annotations

from pathlib import Path

import pytest
from cache_testkit import SAMPLE_TREE, make_tree

from cache.builder import ImageInfo, pack_directory


@pytest.fixture
def sample_tree(tmp_path: Path) -> Path:
    root = make_tree(tmp_path / "src", SAMPLE_TREE)
    (root / "bin/run.sh").chmod(0o755)
    return root


@pytest.fixture
def sample_image(tmp_path: Path, sample_tree: Path) -> ImageInfo:
    out = tmp_path / "images"
    out.mkdir()
    return pack_directory(sample_tree, out)


@pytest.fixture
def served(tmp_path: Path) -> Path:
    path = tmp_path / "published"
    path.mkdir()
    return path
