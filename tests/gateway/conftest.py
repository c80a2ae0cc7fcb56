"""Fixtures shared by the tests/gateway tests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from admissionkit import KEYS

from huselet.tenants.keys import KeyRing, read_keys_file


@pytest.fixture
def ring(tmp_path: Path) -> KeyRing:
    path = tmp_path / "keys.toml"
    path.write_text(KEYS)
    os.chmod(path, 0o600)
    return read_keys_file(path)
