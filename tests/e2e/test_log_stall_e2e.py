"""A stderr that stops taking the daemon's log (a stalled journald, a slow pipe) does
not stop the daemon: requests are served, the log lines that did not fit
``log.buffer_kb`` are dropped and counted, and the stream says how many."""

from __future__ import annotations

from pathlib import Path

import pytest
from daemon_harness import Daemon, function_toml, write_config
from support import write_package

pytestmark = pytest.mark.e2e

ECHO = "def handler(event, context):\n    return event\n"
REQUESTS = 1500  # ~400 bytes of access log each: several times the pipe plus the buffer


def test_a_stalled_stderr_never_stalls_the_daemon(short_tmp: Path) -> None:
    write_package(short_tmp, "echo", ECHO)
    config = write_config(short_tmp, function_toml("echo", max_instances=2))
    # Every request logged (no sampling), into a small buffer.
    config.write_text(config.read_text() + "\n[log]\naccess_rate = 100000\nbuffer_kb = 16\n")
    with Daemon(config) as d:
        d.invoke_ok("echo", {"warm": 1})
        d.pause_log_reader()
        with d.client() as c:  # 30 s per request: a daemon blocked on stderr fails here
            statuses = [
                c.post("/v1/invoke/echo", json={"n": i}).status_code for i in range(REQUESTS)
            ]
        assert statuses == [200] * REQUESTS
        metrics = d.ctl("metrics")
        assert metrics.returncode == 0, metrics.stderr
        dropped = next(
            float(line.split()[-1])
            for line in metrics.stdout.splitlines()
            if line.startswith("huselet_log_lines_dropped_total ")
        )
        assert dropped > 0
        d.resume_log_reader()
        report = d.wait_for_log("log lines dropped: stderr did not take them fast enough")
        assert report["level"] == "warning" and int(report["dropped"]) > 0
