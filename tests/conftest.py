"""Fixtures shared by the whole suite.

* ``short_tmp`` (``module_short_tmp`` for module-scoped fixtures): a temp
  directory under /tmp. Unix socket paths must stay under 108 bytes, so tests
  that bind sockets use it instead of pytest's long ``tmp_path``.
* ``daemon_config``: writes a daemon config (HTTP on port 0) into ``short_tmp``.
* ``start_daemon``: starts the real ``huselet run`` on a config and stops every
  daemon it started when the test ends, whatever happened to the test.
* ``client``: an HTTP client factory bound to a started daemon.

Plain helpers (waiting for a condition, ports, the in-process node stack)
live in ``support.py``; the subprocess daemon in ``daemon_harness.py``.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from daemon_harness import Daemon, write_config


def _short_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="hl"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    yield from _short_dir()


@pytest.fixture(scope="module")
def module_short_tmp() -> Iterator[Path]:
    yield from _short_dir()


@pytest.fixture
def daemon_config(short_tmp: Path) -> Callable[..., Path]:
    """``daemon_config(functions_toml, extra="")``: the config path under ``short_tmp``."""

    def write(functions: str, extra: str = "") -> Path:
        return write_config(short_tmp, functions, extra)

    return write


@pytest.fixture
def start_daemon() -> Iterator[Callable[..., Daemon]]:
    """``start_daemon(config, env=None)``: a ready daemon, stopped at teardown."""
    started: list[Daemon] = []

    def start(config: Path, env: dict[str, str] | None = None) -> Daemon:
        daemon = Daemon(config, env)
        started.append(daemon)
        return daemon

    yield start
    for daemon in reversed(started):
        daemon.__exit__(None, None, None)


@pytest.fixture
def client() -> Iterator[Callable[[Daemon], httpx.Client]]:
    """``client(daemon)``: an HTTP client on its gateway, closed at teardown."""
    opened: list[httpx.Client] = []

    def make(daemon: Daemon) -> httpx.Client:
        c = daemon.client()
        opened.append(c)
        return c

    yield make
    for c in opened:
        c.close()
