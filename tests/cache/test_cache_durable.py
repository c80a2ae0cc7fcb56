"""cache.durable: a small file is replaced whole or not at all, and the rename is synced."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cache.durable import fsync_dir, write_atomically


def test_write_atomically_replaces_the_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "epoch"
    target.write_text("6\n")
    inode = target.stat().st_ino
    write_atomically(target, "7\n")
    assert target.read_text() == "7\n"
    # A new file took the name (rename), never the old one rewritten in place.
    assert target.stat().st_ino != inode
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch"]


def test_a_failed_write_keeps_the_old_content(tmp_path: Path) -> None:
    target = tmp_path / "leader.json"
    target.write_text("old\n")
    # The temporary's name is taken by a directory: the write fails before the rename.
    (tmp_path / "leader.json.tmp").mkdir()
    with pytest.raises(IsADirectoryError):
        write_atomically(target, "new\n")
    assert target.read_text() == "old\n"


def test_fsync_dir_needs_a_directory(tmp_path: Path) -> None:
    fsync_dir(tmp_path)
    fsync_dir(os.fspath(tmp_path))
    (tmp_path / "f").write_text("x")
    with pytest.raises(NotADirectoryError):
        fsync_dir(tmp_path / "f")
