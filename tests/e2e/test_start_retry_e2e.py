"""A start that runs out of ``start_timeout_ms`` is retried for the queue (startretry).

The real daemon, real ``process`` workers (unconfined, so the handler's init
can leave a marker file on the host), real HTTP. The "slow" function's first
import never finishes (it stands for a start stretched by a stalled loop);
every later import is instant: its queued requests must all be served by
the retry. The "never" function's import never finishes: its request gets a
clear 502 after the bounded retries. A handler that raises at import is the
function's own fault: 502 at once, no retry.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from daemon_harness import Daemon, function_toml, write_config
from load_support import BROKEN_ON_IMPORT
from support import write_package

from huselet.dispatch.startretry import MAX_RETRIES

pytestmark = pytest.mark.e2e

# Long enough for a loaded machine to start a plain worker; each stalled
# start costs this much, so the test stays a few seconds per retry.
START_TIMEOUT_MS = 3000
# Each function: its own package, unconfined process workers, this start timeout.
LIMITS = {"runtime": "process", "start_timeout_ms": START_TIMEOUT_MS, "timeout_ms": 60000}
FUNCTIONS = (
    "[runtimes.process]\nisolation = false\n"
    + function_toml("slow", **LIMITS, max_instances=1)
    + function_toml("never", **LIMITS, max_instances=1)
    + function_toml("broken", **LIMITS)
)

# The first import (the one that creates the marker) stalls past the start
# timeout and ignores SIGTERM, so its teardown outlasts the retry's backoff
# (the failed instance holds the only slot until it is killed).
SLOW_FIRST = """
import os, signal, time
try:
    os.close(os.open({marker!r}, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    time.sleep(3600)
except FileExistsError:
    pass
def handler(event, context):
    return {{"pid": os.getpid()}}
"""
NEVER = """
import time
time.sleep(3600)
def handler(event, context):
    return {}
"""


@pytest.fixture
def daemon(short_tmp: Path, start_daemon: Any) -> Daemon:
    write_package(short_tmp, "slow", SLOW_FIRST.format(marker=str(short_tmp / "slow.first")))
    write_package(short_tmp, "never", NEVER)
    write_package(short_tmp, "broken", BROKEN_ON_IMPORT)
    started: Daemon = start_daemon(write_config(short_tmp, FUNCTIONS))
    return started


def counters(daemon: Daemon, name: str) -> dict[str, int]:
    found = [f for f in daemon.status()["functions"] if f["name"] == name]
    assert found, name
    return dict(found[0]["counters"])


def test_queued_requests_are_served_by_a_retry_after_a_start_timed_out(
    daemon: Daemon, short_tmp: Path
) -> None:
    with ThreadPoolExecutor(4) as pool:
        replies = list(pool.map(lambda i: daemon.invoke("slow", {"i": i}, timeout=90), range(4)))
    assert [r.status_code for r in replies] == [200] * 4, [r.text for r in replies]
    assert (short_tmp / "slow.first").exists()  # the first start really stalled
    seen = counters(daemon, "slow")
    assert seen["start_failures"] >= 1 and seen["start_retries"] >= 1, seen
    assert seen.get("failed_start", 0) == 0, seen
    assert daemon.wait_for_log("instance start timed out; retrying", function="slow")


def test_a_function_that_never_starts_gets_a_clear_502_after_bounded_retries(
    daemon: Daemon,
) -> None:
    reply = daemon.invoke("never", {}, timeout=90)
    assert reply.status_code == 502, reply.text
    error = reply.json()["error"]
    assert error["code"] == "instance_start_failed"
    assert f"did not load within {START_TIMEOUT_MS} ms" in error["message"]
    seen = counters(daemon, "never")
    assert seen["start_retries"] == MAX_RETRIES, seen
    assert seen["start_failures"] == MAX_RETRIES + 1, seen
    assert seen["failed_start"] == 1, seen


def test_a_handler_that_raises_at_import_is_not_retried(daemon: Daemon) -> None:
    reply = daemon.invoke("broken", {})
    assert reply.status_code == 502, reply.text
    assert reply.json()["error"]["code"] == "instance_start_failed"
    assert "RuntimeError" in reply.json()["error"]["message"]
    seen = counters(daemon, "broken")
    assert seen.get("start_retries", 0) == 0 and seen["start_failures"] == 1, seen
