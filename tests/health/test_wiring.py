"""A daemon's health loops, as health/wiring.py assembles them for the real Daemon."""

from __future__ import annotations

from pathlib import Path

from daemon_harness import write_config

from huselet.config import load_config
from huselet.daemon import Daemon
from huselet.notify import SystemdNotifier


async def test_the_daemon_supervises_every_loop_and_watches_its_dispatcher(
    short_tmp: Path,
) -> None:
    daemon = Daemon(load_config(write_config(short_tmp, "")), notifier=SystemdNotifier(None))
    assert list(daemon.health.reports) == [
        *("event_loop", "watchdog", "disk", "memory", "descriptors", "recovery"),
        *("instances", "crash_loops", "cache_integrity", "idle_tick", "memory_stalls"),
    ]  # standalone: no scheduler_link loop
    # The watchdog's critical components; "scheduler" names the central one only.
    checks = daemon._critical_checks()
    assert set(checks) == {"ingress", "dispatcher", "instance links"}
    assert checks["dispatcher"]() == "not running"  # constructed, not yet run
    assert daemon.recovery in daemon.health.loops
    assert daemon.lag_probe.histogram is daemon.metrics.lag
