"""A reload whose re-pack runs pip for long answers at once; the pack goes on behind it.

The real daemon, a real ``pip`` and a real (loopback) package index that
holds every request until the test lets it answer: the first ``ctl reload``
after a ``requirements.txt`` appears must reply within its own timeout,
saying the function is still packing, while the old code keeps serving and
another reload is not held up. When pip finally hears 404, the pack fails,
is logged, and the old code still serves.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from daemon_harness import Daemon, function_toml, wait_until, write_config

pytestmark = pytest.mark.e2e

HOLD_LIMIT_S = 120.0  # the index answers by then even if the test never releases it
VERSIONED = "def handler(event, context):\n    return {{'v': {v}}}\n"


class StallingIndex:
    """An HTTP server on loopback that answers 404 to everything, once released."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.hits = 0
        index = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                index.hits += 1
                index.release.wait(HOLD_LIMIT_S)
                self.send_error(404)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/simple/"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def index() -> Iterator[StallingIndex]:
    server = StallingIndex()
    try:
        yield server
    finally:
        server.close()


def test_a_reload_does_not_wait_for_pip_beyond_its_timeout(
    short_tmp: Path, index: StallingIndex
) -> None:
    pkg = short_tmp / "pkg"
    pkg.mkdir()
    (pkg / "main.py").write_text(VERSIONED.format(v=0))
    config = write_config(short_tmp, function_toml("dep", str(pkg), runtime="process"))
    with Daemon(config) as d:
        assert d.invoke_ok("dep") == {"v": 0}
        (pkg / "requirements.txt").write_text(f"--index-url {index.url}\nhuselet-absent==1.0\n")
        (pkg / "main.py").write_text(VERSIONED.format(v=1))
        out = d.ctl("reload")  # ctl's default timeout (5 s): the reply must come within it
        assert out.returncode == 0, out.stderr
        assert "still packing" in out.stdout and "dep" in out.stdout, out.stdout
        assert wait_until(lambda: index.hits >= 1)  # pip is really waiting on the index
        assert d.invoke_ok("dep") == {"v": 0}  # the old code serves meanwhile
        again = d.ctl("reload")  # the reload lock is not held by the pack
        assert again.returncode == 0, again.stderr
        index.release.set()  # pip hears 404: no such requirement
        failed = d.wait_for_log("cannot pack package directory", timeout=HOLD_LIMIT_S)
        assert failed["directory"] == str(pkg)
        assert d.invoke_ok("dep") == {"v": 0}
