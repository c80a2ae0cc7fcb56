"""Fixtures of the tenants e2e tests: a real daemon with a keys file, per test module."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from daemon_harness import Daemon, write_config
from support import write_package
from tenants_support import ECHO, FUNCTIONS, keys_toml, write_keys


@pytest.fixture(scope="module")
def root() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="hlt"))
    write_package(path, "echo", ECHO)
    write_keys(path / "keys.toml", keys_toml())
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def daemon(root: Path, request: pytest.FixtureRequest) -> Iterator[Daemon]:
    """The module's daemon; a module's ``AUTH_EXTRA`` (TOML lines) is added to ``[auth]``."""
    extra = getattr(request.module, "AUTH_EXTRA", "")
    config = write_config(root, FUNCTIONS)
    text = config.read_text().replace(
        "[gateway]",
        f'[auth]\nkeys_file = "{root}/keys.toml"\nkeys_poll_ms = 100\n{extra}[gateway]\n'
        f'framed = "127.0.0.1:0"\nframed_socket = "{root}/run/framed.sock"',
    )
    config.write_text(text)
    with Daemon(config) as d:
        yield d
