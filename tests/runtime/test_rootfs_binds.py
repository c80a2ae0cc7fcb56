"""Which host paths a function's sandbox view binds (huselet/sandbox/rootfs.py)."""

from __future__ import annotations

from pathlib import Path

from huselet.config import IMAGE_ONLY_CWD
from huselet.sandbox.rootfs import plan_binds


def test_an_image_only_function_binds_its_image_not_the_host_root(tmp_path: Path) -> None:
    image = tmp_path / "app.hlimg"
    image.write_bytes(b"")
    binds = plan_binds(str(IMAGE_ONLY_CWD), [str(image)])
    targets = [b.target for b in binds]
    assert "/" not in targets  # would show the whole host file system to the function
    assert str(image) in targets


def test_a_package_directory_is_bound(tmp_path: Path) -> None:
    assert str(tmp_path) in [b.target for b in plan_binds(str(tmp_path), [])]
