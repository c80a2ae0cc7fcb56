"""Lag probe, supervisor and the systemd watchdog against a real datagram socket:
a blocked event loop or a dead critical component stops the pets."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import trio

from huselet.health.lag import LagProbe
from huselet.health.supervisor import HealthState, HealthSupervisor, LoopReport
from huselet.health.watchdog import WatchdogPetter, watchdog_interval_s
from huselet.notify import SystemdNotifier


def receiver(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.setblocking(False)
    return sock


def drain(sock: socket.socket) -> list[bytes]:
    out = []
    while True:
        try:
            out.append(sock.recv(4096))
        except BlockingIOError:
            return out


def test_watchdog_interval_from_env() -> None:
    assert watchdog_interval_s({"WATCHDOG_USEC": "2000000"}) == 2.0
    assert (
        watchdog_interval_s({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": str(os.getpid())}) == 2.0
    )
    assert watchdog_interval_s({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "1"}) is None
    assert watchdog_interval_s({"WATCHDOG_USEC": "junk"}) is None
    assert watchdog_interval_s({}) is None


async def test_pets_stop_while_the_loop_is_blocked_and_resume_after(short_tmp: Path) -> None:
    sock = receiver(short_tmp / "notify")
    lag = LagProbe(period_s=0.05, degraded_ms=50, failing_ms=300)
    petter = WatchdogPetter(SystemdNotifier(str(short_tmp / "notify")), lag, {}, interval_s=0.4)
    supervisor = HealthSupervisor([lag, petter])
    async with trio.open_nursery() as nursery:
        await nursery.start(supervisor.run)
        await trio.sleep(0.5)
        healthy = drain(sock)
        assert healthy and all(m == b"WATCHDOG=1" for m in healthy)
        time.sleep(0.8)  # a wedged event loop: nothing runs for 0.8 s
        assert drain(sock) == []  # two pet windows passed without a pet
        await trio.sleep(0.1)
        assert lag.max_lag_ms >= 300
        assert supervisor.reports["event_loop"].counters["stalls"] >= 1
        await trio.sleep(0.6)  # responsive again: pets resume
        assert drain(sock)
        assert supervisor.reports["event_loop"].state is not HealthState.FAILING
        nursery.cancel_scope.cancel()


async def test_dead_critical_component_stops_pets(short_tmp: Path) -> None:
    sock = receiver(short_tmp / "notify")
    lag = LagProbe(period_s=0.05)
    alive = {"ok": True}
    petter = WatchdogPetter(
        SystemdNotifier(str(short_tmp / "notify")),
        lag,
        {"ingress": lambda: None if alive["ok"] else "listener closed"},
        interval_s=0.2,
    )
    supervisor = HealthSupervisor([lag, petter])
    async with trio.open_nursery() as nursery:
        await nursery.start(supervisor.run)
        await trio.sleep(0.35)
        assert drain(sock)
        alive["ok"] = False
        await trio.sleep(0.15)
        drain(sock)
        await trio.sleep(0.5)
        assert drain(sock) == []
        report = supervisor.reports["watchdog"]
        assert report.state is HealthState.FAILING and "ingress: listener closed" in report.detail
        nursery.cancel_scope.cancel()


async def test_a_crashing_loop_is_reported_and_restarted() -> None:
    class Flaky:
        name = "flaky"
        runs = 0

        async def run(self, report: LoopReport) -> None:
            Flaky.runs += 1
            if Flaky.runs == 1:
                raise OSError("disk went away")
            report.set(HealthState.OK, "fine now")
            await trio.sleep_forever()

    supervisor = HealthSupervisor([Flaky()])
    async with trio.open_nursery() as nursery:
        await nursery.start(supervisor.run)
        await trio.sleep(0.05)
        assert supervisor.reports["flaky"].state is HealthState.FAILING
        assert "OSError: disk went away" in supervisor.reports["flaky"].detail
        await trio.sleep(0.2)
        assert Flaky.runs == 2 and supervisor.overall() is HealthState.OK
        assert supervisor.describe()["loops"][0]["counters"]["crashes"] == 1
        nursery.cancel_scope.cancel()
