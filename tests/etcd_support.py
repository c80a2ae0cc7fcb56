"""A real etcd member per test (free ports, temp dir), for the central scheduler's tests.

Import the ``etcd`` fixture into a conftest.py: ``from etcd_support import etcd``.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from huselet.central.embedded import PrivateEtcd, etcd_binary


@pytest.fixture
def etcd() -> Iterator[PrivateEtcd]:
    if etcd_binary() is None:
        pytest.skip("etcd is not installed: scripts/bootstrap.sh test installs etcd-server")
    root = Path(tempfile.mkdtemp(prefix="hletcd"))
    server = PrivateEtcd(root / "data", log_path=root / "etcd.log")
    try:
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)
