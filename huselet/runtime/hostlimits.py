"""Starts refused at the host's limits: which limit, told apart from a broken function.

When the host (or a limit the operator set for it) has no room for another
process — ``clone`` fails with ``EAGAIN`` (RLIMIT_NPROC of the function's
uid, a cgroup's ``pids.max``, ``kernel.threads-max``), ``ENOMEM``, or the
daemon runs out of descriptors (``EMFILE``/``ENFILE``) — the start is
refused with :class:`StartRefused`. The pool answers that with a 503
naming the limit and holds new starts of the function for a moment
(:mod:`huselet.dispatch.hostlimit`); it does not count it against the
function's circuit breaker, whose job is code that keeps failing.
"""

from __future__ import annotations

import enum
import errno
import resource

from huselet.runtime.base import StartFailed


class HostLimit(enum.Enum):
    PROCESSES = "processes"  # EAGAIN from clone/fork: pids.max, RLIMIT_NPROC, threads-max
    MEMORY = "memory"  # ENOMEM from clone/fork
    DESCRIPTORS = "descriptors"  # EMFILE / ENFILE in the daemon


_BY_ERRNO = {
    errno.EAGAIN: HostLimit.PROCESSES,
    errno.ENOMEM: HostLimit.MEMORY,
    errno.EMFILE: HostLimit.DESCRIPTORS,
    errno.ENFILE: HostLimit.DESCRIPTORS,
}

_WHAT = {
    HostLimit.PROCESSES: "the node is at its process limit",
    HostLimit.MEMORY: "the node has no memory for another process",
    HostLimit.DESCRIPTORS: "the node is out of file descriptors",
}


class StartRefused(StartFailed):
    """A start refused because a host limit is reached (not the function's fault).

    The runtime's side; callers get :class:`huselet.errors.HostLimitReached` (503).
    """

    def __init__(self, limit: HostLimit, detail: str) -> None:
        super().__init__(f"{_WHAT[limit]} ({detail})")
        self.limit = limit


def limit_of(code: int | None) -> HostLimit | None:
    """The host limit an errno of a failed clone/fork/pipe means, if any."""
    return _BY_ERRNO.get(code) if code is not None else None


def start_failure(what: str, code: int | None, detail: str) -> StartFailed:
    """The error for a failed start step: typed when a host limit caused it."""
    limit = limit_of(code)
    if limit is not None:
        return StartRefused(limit, f"{what}: {detail}")
    return StartFailed(f"{what}: {detail}")


def raise_nofile_limit() -> None:
    """The daemon's descriptor limit up to its hard limit (a runtime that holds
    a pidfd, an output pipe and a link socket per instance calls it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
