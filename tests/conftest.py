"""Shared fixtures. Unix socket paths must stay under 108 bytes, so tests that
bind sockets use ``short_tmp`` (under /tmp) instead of pytest's long tmp_path."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="hl"))
    yield path
    shutil.rmtree(path, ignore_errors=True)
