"""Fixtures shared by the tests/gateway tests."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
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


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    """(server end, client end) of one loopback TCP connection."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname())
        server, _ = listener.accept()
    with server, client:
        yield server, client
