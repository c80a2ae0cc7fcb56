"""The shared runtime base (huselet.runtime.common): spawns never block the event loop.

For every built-in runtime, a burst of cold starts (fork: of zygotes) runs
while a trio task counts its turns. Every ``subprocess.Popen`` the runtime
makes waits, inside the spawn, until that task has had more turns: it gets
them only if the spawn is not running on the event loop's own thread. So the
check is progress of the loop during each spawn, not a wall-clock bound.
"""

from __future__ import annotations

import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import trio

from huselet.runtime.common import ChildRuntime, SandboxRuntime
from huselet.testing.conformance import ECHO, WAIT_S, invoke_json, require_tools
from huselet.testing.probes import host_problem, sandbox_settings
from huselet.testing.stack import running_stack, write_package

BURST = 4
TURNS = 3  # loop turns each spawn waits for


class LoopTurns:
    """A trio task's turn counter, read from other threads."""

    def __init__(self) -> None:
        self.count = 0

    async def run(self) -> None:
        while True:
            self.count += 1
            await trio.sleep(0.001)

    def wait_for_more(self, turns: int) -> bool:
        """Block this (non-loop) thread until the loop has taken ``turns`` more turns."""
        target = self.count + turns
        deadline = time.monotonic() + WAIT_S
        while self.count < target:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.001)
        return True


def watch_spawns(monkeypatch: pytest.MonkeyPatch, turns: LoopTurns) -> list[dict[str, Any]]:
    """Every Popen from now on: its command, and whether the loop served during it."""
    seen: list[dict[str, Any]] = []
    loop_thread = threading.current_thread()
    real = subprocess.Popen

    class Watched(real):  # type: ignore[valid-type,misc]
        def __init__(self, args: Any, *rest: Any, **kw: Any) -> None:
            # On the loop's own thread the loop cannot turn while we wait:
            # record the failure at once instead of waiting out the deadline.
            off_loop = threading.current_thread() is not loop_thread
            served = off_loop and turns.wait_for_more(TURNS)
            seen.append({"argv": [str(a) for a in args], "off_loop": off_loop, "served": served})
            super().__init__(args, *rest, **kw)

    monkeypatch.setattr(subprocess, "Popen", Watched)
    return seen


def runtime_table(runtime: str, root: Path) -> dict[str, Any]:
    if runtime == "process":
        return {}
    problem = host_problem() or require_tools(*{"bwrap": ("bwrap", "setpriv")}.get(runtime, ()))
    problem = problem or (require_tools("runc") if runtime == "oci" else None)
    if problem:
        pytest.skip(f"host cannot run {runtime}: {problem}")
    return sandbox_settings(root)


@pytest.mark.parametrize("runtime", ["process", "fork", "bwrap", "oci"])
async def test_the_loop_serves_during_a_burst_of_spawns(
    runtime: str, short_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    table = runtime_table(runtime, short_tmp)
    functions = [
        {
            "name": f"f{i}",
            "package": str(write_package(short_tmp, f"f{i}", ECHO)),
            "handler": "main:handler",
            "runtime": runtime,
        }
        for i in range(BURST)
    ]
    turns = LoopTurns()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(turns.run)
        seen = watch_spawns(monkeypatch, turns)
        # fork: the zygotes are spawned at start (a burst of BURST); the others
        # spawn an instance per function on the concurrent first requests.
        async with running_stack(short_tmp, functions, {runtime: table}) as stack:
            with trio.fail_after(WAIT_S):
                async with trio.open_nursery() as burst:
                    for fn in functions:
                        burst.start_soon(invoke_json, stack, fn["name"], {})
            assert isinstance(stack.runtimes[runtime], ChildRuntime)
        nursery.cancel_scope.cancel()
    spawns = [s for s in seen if runtime != "process" or "huselet" in " ".join(s["argv"])]
    assert len(spawns) >= BURST, seen
    on_loop = [s["argv"] for s in spawns if not s["off_loop"]]
    assert on_loop == [], f"spawned on the event loop's thread: {on_loop}"
    assert all(s["served"] for s in spawns), spawns


def test_the_built_in_runtimes_share_the_base() -> None:
    from huselet.runtime.bwrap import BwrapRuntime
    from huselet.runtime.fork import ForkRuntime
    from huselet.runtime.oci import OciRuntime
    from huselet.runtime.process import ProcessRuntime

    assert issubclass(ProcessRuntime, ChildRuntime)
    assert all(issubclass(c, SandboxRuntime) for c in (ForkRuntime, BwrapRuntime, OciRuntime))
