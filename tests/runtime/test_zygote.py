"""The daemon's side of a zygote (huselet.runtime.zygote), where the fork runtime's
end-to-end tests cannot aim: a zygote killed at an exact moment of its build."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path
from typing import Any

import trio

from huselet.config import parse_config
from huselet.runtime import available_runtimes
from huselet.runtime.spawner import SpawnThread
from huselet.runtime.zygote import ZygoteProcess
from huselet.sandbox.confine import SandboxPlan
from huselet.testing.checks import WAIT_S, pid_gone
from huselet.testing.stack import write_package


async def test_a_zygote_killed_before_it_gets_its_plan_fails_one_build_not_the_runtime(
    short_tmp: Path,
) -> None:
    pkg = write_package(short_tmp, "f", "def handler(e, c):\n    return 1\n")
    raw = {
        "node": {"state_dir": str(short_tmp / "state"), "run_dir": str(short_tmp / "run")},
        "functions": [{"name": "f", "package": str(pkg), "handler": "main:handler"}],
    }
    config = parse_config(raw, base_dir=short_tmp, known_runtimes=frozenset(available_runtimes()))
    fn = config.function("f")
    assert fn is not None
    spawner = SpawnThread()
    spawner.start()

    async def spawn_then_die(argv: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        # Killed from outside (e.g. its cgroup swept) before the daemon sends its plan.
        popen: subprocess.Popen[bytes] = await spawner.run(lambda: subprocess.Popen(argv, **kwargs))
        pidfd = os.pidfd_open(popen.pid)
        try:
            os.kill(popen.pid, signal.SIGKILL)
            await trio.lowlevel.wait_readable(pidfd)  # it has exited: its end is closed
        finally:
            os.close(pidfd)
        return popen

    plan = SandboxPlan(function="f", package=str(pkg), handler="main:handler", isolate=False)
    zygote = ZygoteProcess(
        "z-f.1", fn, plan, None, on_orphan=lambda pid: None, spawn=spawn_then_die
    )
    try:
        with trio.fail_after(WAIT_S):
            await zygote.run(WAIT_S)  # returns: the build failed, nothing raised
    finally:
        spawner.stop()
    assert zygote.error is not None and "could not be configured" in zygote.error, zygote.error
    assert zygote.exited.is_set() and not zygote.is_ready
    assert pid_gone(zygote.pid)  # reaped
