"""The runtime conformance suite (huselet.testing.conformance) for every built-in
runtime; what only one runtime does is tested in its own file."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any, ClassVar

import trio

from huselet.errors import InstanceStartFailed
from huselet.runtime import available_runtimes
from huselet.testing.conformance import (
    ECHO,
    WAIT_S,
    Claim,
    RuntimeConformance,
    SandboxConformance,
    invoke_json,
    require_tools,
    wait_for,
    zombie_children,
)
from huselet.testing.probes import UID_BASE, describe_pids, processes_of_uids


class TestProcess(RuntimeConformance):
    runtime = "process"
    # As root (safe by default) the worker confines itself before it imports
    # the function (huselet.sandbox.launch): its own uid with no privileges,
    # a read-only root without the run dir, its own network namespace. No PID
    # namespace, no cgroup: memory_mb is an address-space limit (a hog gets
    # MemoryError rather than an OOM kill), and nothing bounds its pids.
    claims: ClassVar[frozenset[Claim]] = (
        frozenset({Claim.PRIVILEGES, Claim.FILESYSTEM, Claim.NETWORK})
        if os.geteuid() == 0
        else frozenset()
    )

    def runtime_table(self, root: Path, **extra: Any) -> dict[str, Any]:
        # This session's block of helper uids, so leftover checks see only ours.
        return {"uid_base": UID_BASE, **extra}

    def leftovers(self, root: Path) -> list[str]:
        return describe_pids(processes_of_uids(*self.uid_range))


class TestFork(SandboxConformance):
    runtime = "fork"


class TestBwrap(SandboxConformance):
    runtime = "bwrap"
    visible_pids: ClassVar[list[int]] = [1, 2]  # bwrap's reaper and the worker

    def host_problem(self) -> str | None:
        return super().host_problem() or require_tools("bwrap", "setpriv")


class TestOci(SandboxConformance):
    runtime = "oci"

    def host_problem(self) -> str | None:
        return super().host_problem() or require_tools("runc")

    def leftovers(self, root: Path) -> list[str]:
        bundles = root / "run" / "oci"
        return super().leftovers(root) + ([str(bundles)] if bundles.exists() else [])

    async def test_starts_given_up_while_runc_runs_leave_no_zombie(self, root: Path) -> None:
        # Deadlines around runc's own start time, so some starts give up while
        # runc is creating the container (which path each takes varies; none
        # may leave the container's process, our child, unreaped).
        for ms in (40, 60, 80, 100, 120):
            fn = self.function(root, f"f{ms}", ECHO, start_timeout_ms=ms, timeout_ms=600_000)
            async with self.stack(root / str(ms), [fn]) as stack:
                with trio.fail_after(WAIT_S), contextlib.suppress(InstanceStartFailed):
                    await invoke_json(stack, f"f{ms}", {})
            await wait_for(lambda: not zombie_children(), f"zombies left: {zombie_children()}")


def test_every_registered_runtime_runs_the_suite() -> None:
    covered = {cls.runtime for cls in (TestProcess, TestFork, TestBwrap, TestOci)}
    assert set(available_runtimes()) <= covered, "add a conformance class for the new runtime"
