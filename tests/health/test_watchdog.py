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

WAIT_S = 30.0  # bound of every wait on a condition: it only ends a failing test


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


async def pets_arrive(sock: socket.socket, timeout: float = WAIT_S) -> list[bytes]:
    """Wait for at least one datagram; all that arrived."""
    with trio.fail_after(timeout):
        while not (got := drain(sock)):
            await trio.sleep(0.01)
    return got


async def test_pets_stop_while_the_loop_is_blocked_and_resume_after(short_tmp: Path) -> None:
    sock = receiver(short_tmp / "notify")
    lag = LagProbe(period_s=0.05, degraded_ms=50, failing_ms=300)
    petter = WatchdogPetter(SystemdNotifier(str(short_tmp / "notify")), lag, {}, interval_s=0.4)
    supervisor = HealthSupervisor([lag, petter])
    async with trio.open_nursery() as nursery:
        await nursery.start(supervisor.run)
        healthy = await pets_arrive(sock)
        assert all(m == b"WATCHDOG=1" for m in healthy)
        drain(sock)
        time.sleep(0.8)  # the fault: a wedged event loop, nothing runs for 0.8 s
        assert drain(sock) == []  # no checkpoint since the last drain: nothing could pet
        with trio.fail_after(WAIT_S):
            while supervisor.reports["event_loop"].counters["stalls"] < 1:
                await trio.sleep(0.01)
        assert lag.max_lag_ms >= 300
        # Responsive again: pets resume and the loop is no longer failing.
        assert await pets_arrive(sock)
        with trio.fail_after(WAIT_S):
            while supervisor.reports["event_loop"].state is HealthState.FAILING:
                await trio.sleep(0.01)
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
        assert await pets_arrive(sock)
        alive["ok"] = False
        report = supervisor.reports["watchdog"]
        with trio.fail_after(WAIT_S):
            while report.counters["skipped"] < 1:
                await trio.sleep(0.01)
        drain(sock)  # pets sent before it noticed
        pets, skipped = report.counters["pets"], report.counters["skipped"]
        # Two more rounds of the petter, counted, not timed: neither pets.
        with trio.fail_after(WAIT_S):
            while report.counters["skipped"] < skipped + 2:
                await trio.sleep(0.01)
        assert drain(sock) == [] and report.counters["pets"] == pets
        assert report.state is HealthState.FAILING and "ingress: listener closed" in report.detail
        nursery.cancel_scope.cancel()


async def test_a_crashing_loop_is_reported_and_restarted() -> None:
    release = trio.Event()

    class Flaky:
        name = "flaky"
        runs = 0

        async def run(self, report: LoopReport) -> None:
            Flaky.runs += 1
            if Flaky.runs == 1:
                raise OSError("disk went away")
            await release.wait()  # the test has seen the crash reported
            report.set(HealthState.OK, "fine now")
            await trio.sleep_forever()

    supervisor = HealthSupervisor([Flaky()])
    async with trio.open_nursery() as nursery:
        await nursery.start(supervisor.run)
        with trio.fail_after(WAIT_S):
            while supervisor.reports["flaky"].state is not HealthState.FAILING:
                await trio.sleep(0.01)
        assert "OSError: disk went away" in supervisor.reports["flaky"].detail
        release.set()
        with trio.fail_after(WAIT_S):
            while not (Flaky.runs == 2 and supervisor.overall() is HealthState.OK):
                await trio.sleep(0.01)
        assert supervisor.describe()["loops"][0]["counters"]["crashes"] == 1
        nursery.cancel_scope.cancel()
