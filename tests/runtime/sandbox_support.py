"""Moved to :mod:`huselet.testing.probes` (shipped with the runtime conformance
suite); this name stays for tests written before the move. Import from there."""

from pathlib import Path

from huselet.testing.conformance import invoke_json
from huselet.testing.probes import (
    ESCAPE_HANDLER,
    UID_BASE,
    cgroup_leftovers,
    describe_pids,
    host_problem,
    processes_of_uids,
    require_sandbox_host,
    sandbox_settings,
)

__all__ = [
    "ESCAPE_HANDLER",
    "UID_BASE",
    "cgroup_leftovers",
    "describe_pids",
    "function",
    "host_problem",
    "invoke_json",
    "processes_of_uids",
    "require_sandbox_host",
    "sandbox_settings",
]


def function(runtime: str, name: str, pkg: Path, **extra: object) -> dict[str, object]:
    """A [[functions]] entry for ``runtime`` whose code is the directory ``pkg``."""
    return {
        "name": name,
        "package": str(pkg),
        "handler": "main:handler",
        "runtime": runtime,
        **extra,
    }
