"""Moved to :mod:`huselet.testing.probes` (shipped with the runtime conformance
suite); this name stays for tests written before the move. Import from there."""

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
    "host_problem",
    "processes_of_uids",
    "require_sandbox_host",
    "sandbox_settings",
]
