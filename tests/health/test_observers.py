"""The observer loops turn pool counters into health reports: real instances,
real faults (SIGKILL, a function that cannot import)."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import trio
from support import GATE_WAIT, running_stack, write_package

from huselet.errors import InstanceLost, InstanceStartFailed, Unavailable
from huselet.health.observers import CrashLoops, InstanceLiveness
from huselet.health.supervisor import HealthSupervisor

HELD = (
    GATE_WAIT
    + """
import os
def handler(event, context):
    if event.get("gate"):
        wait_at_gate(event["gate"])
    return {"pid": os.getpid()}
"""
)


def fn(root: Path, name: str, source: str = HELD) -> dict:
    write_package(root, name, source)
    return {"name": name, "package": f"pkgs/{name}", "handler": "main:handler"}


async def test_instance_deaths_are_reported_as_healing_actions(short_tmp: Path) -> None:
    async with running_stack(short_tmp, [fn(short_tmp, "s")]) as node:
        health = HealthSupervisor([InstanceLiveness(node.dispatcher, period_s=0.05)])
        async with trio.open_nursery() as nursery:
            await nursery.start(health.run)
            report = health.reports["instances"]
            with trio.fail_after(30):
                await node.dispatcher.invoke("s", b"{}", "json")
                await trio.sleep(0.1)
                assert report.state.value == "ok" and report.last_action is None

                async def kill_busy() -> None:
                    pool = node.pool("s")
                    while not any(r.inflight for r in pool.instances.values()):
                        await trio.sleep(0.005)
                    for r in pool.instances.values():
                        os.kill(r.handle.pid, signal.SIGKILL)

                nursery.start_soon(kill_busy)
                with pytest.raises(InstanceLost):
                    # Held at a gate never opened: it ends only by the kill.
                    await node.dispatcher.invoke("s", b'{"gate": "/tmp/never"}', "json")
                while report.counters["instances_lost"] == 0:
                    await trio.sleep(0.01)
            assert report.state.value == "degraded"
            assert report.last_action == "s: instance ended unexpectedly (x1)"
            nursery.cancel_scope.cancel()


async def test_an_open_breaker_degrades_crash_loops_until_it_closes(short_tmp: Path) -> None:
    functions = [fn(short_tmp, "bad", "raise ImportError('nope')\n")]
    async with running_stack(
        short_tmp, functions, extra={"health": {"breaker_failures": 2}}
    ) as node:
        health = HealthSupervisor([CrashLoops(node.dispatcher, period_s=0.05)])
        async with trio.open_nursery() as nursery:
            await nursery.start(health.run)
            report = health.reports["crash_loops"]
            with trio.fail_after(30):
                for _ in range(2):
                    with pytest.raises(InstanceStartFailed):
                        await node.dispatcher.invoke("bad", b"{}", "json")
                with pytest.raises(Unavailable):
                    await node.dispatcher.invoke("bad", b"{}", "json")
                while report.state.value != "degraded":
                    await trio.sleep(0.01)
                assert "bad (open: instance start failed" in report.detail
                assert report.counters["breakers_opened"] == 1
                write_package(short_tmp, "bad", HELD)
                node.pool("bad").breaker.allow_trial(trio.current_time())
                await node.dispatcher.invoke("bad", b"{}", "json")
                while report.state.value != "ok":
                    await trio.sleep(0.01)
            nursery.cancel_scope.cancel()
