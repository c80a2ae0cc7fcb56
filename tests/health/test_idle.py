"""The idle tick through the real daemon: a quiet node's loops stretch their tick, and
the first request or an instance's end snaps them back at once.

The idle tick here is an hour: a loop still stretched would not report again
within the test, so every "reported again" below can only come from a
snap-back. What the tests read is what an operator sees (``huselet ctl health``).
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

import pytest
from daemon_harness import Daemon, function_toml, wait_until, write_config
from load_support import SLEEPY_HANDLER
from support import write_package

from huselet.config import load_config

WAIT_S = 30.0  # a generous bound for each condition on a loaded machine
HOUR_MS = 3_600_000

IDLE = f"""
[health]
idle_after_ms = 300
idle_tick_ms = {HOUR_MS}
"""


def loops(d: Daemon) -> dict[str, dict[str, Any]]:
    out = d.ctl("health", "--json")
    assert out.returncode == 0, out.stderr
    return {row["loop"]: row for row in json.loads(out.stdout)["loops"]}


def quiet(d: Daemon) -> bool:
    return loops(d)["idle_tick"]["detail"].startswith("quiet")


def samples(d: Daemon) -> int:
    return int(loops(d)["event_loop"]["counters"].get("samples", 0))


@pytest.fixture
def daemon(short_tmp: Path, start_daemon: Any) -> Daemon:
    write_package(short_tmp, "echo", SLEEPY_HANDLER)
    functions = function_toml("echo", runtime="fork", min_instances=1)
    d: Daemon = start_daemon(write_config(short_tmp, functions, IDLE))
    assert wait_until(lambda: d.instance_pids(), WAIT_S)
    return d


def test_a_quiet_node_snaps_back_to_its_one_second_tick_on_the_first_request(
    daemon: Daemon,
) -> None:
    assert wait_until(lambda: quiet(daemon), WAIT_S)
    before = samples(daemon)
    assert daemon.invoke_ok("echo", {}) is not None
    # The lag probe reports again (twice: not one last report as it went quiet):
    # stretched, it would next report in an hour.
    assert wait_until(lambda: samples(daemon) >= before + 2, WAIT_S)
    row = loops(daemon)["idle_tick"]
    assert row["counters"].get("snap_backs", 0) >= 1
    assert row["counters"].get("went_quiet", 0) >= 1
    # The kernel's memory stall reports are watched (or the loop says why not).
    stalls = loops(daemon)["memory_stalls"]["detail"]
    assert stalls.startswith(("armed", "no memory stall trigger")), stalls


def test_an_idle_instance_that_dies_is_reported_at_once_not_an_idle_tick_later(
    daemon: Daemon,
) -> None:
    (pid,) = daemon.instance_pids()
    assert wait_until(lambda: quiet(daemon), WAIT_S)
    os.kill(pid, signal.SIGKILL)
    # The instance's end snaps the observers back onto the 1 s tick; the
    # instances loop then reports the loss (an hour later otherwise).
    assert wait_until(
        lambda: loops(daemon)["instances"]["counters"].get("instances_lost", 0) >= 1, WAIT_S
    )


def test_idle_tick_keys_are_read_and_zero_switches_stretching_off(short_tmp: Path) -> None:
    config = load_config(write_config(short_tmp, "", IDLE))
    assert config.health.idle_tick_ms == HOUR_MS and config.health.idle_after_ms == 300
    off = load_config(write_config(short_tmp, "", "[health]\nidle_tick_ms = 0\n"))
    assert off.health.idle_tick_ms == 0
    assert load_config(write_config(short_tmp, "", "")).health.idle_tick_ms == 5000
