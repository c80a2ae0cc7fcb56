"""The runtime conformance suite (huselet.testing.conformance) for every built-in
runtime; what only one runtime does is tested in its own file."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from huselet.runtime import available_runtimes
from huselet.testing.conformance import Claim, RuntimeConformance, SandboxConformance, require_tools


class TestProcess(RuntimeConformance):
    runtime = "process"
    # No isolation is claimed: a plain child process with rlimits (memory_mb is
    # an address-space limit, so a hog gets MemoryError rather than an OOM kill).
    claims: ClassVar[frozenset[Claim]] = frozenset()


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


def test_every_registered_runtime_runs_the_suite() -> None:
    covered = {cls.runtime for cls in (TestProcess, TestFork, TestBwrap, TestOci)}
    assert set(available_runtimes()) <= covered, "add a conformance class for the new runtime"
