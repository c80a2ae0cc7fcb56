"""Fixtures of the admin socket tests: where the socket lives."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def sock_dir(short_tmp: Path) -> Path:
    """A short directory (Unix socket paths must fit in 108 bytes)."""
    return short_tmp


@pytest.fixture
def sock_path(sock_dir: Path) -> Path:
    return sock_dir / "admin.sock"
