"""Isolation policy shared by the sandboxing runtimes (``fork``, ``bwrap``, ``oci``).

What this module decides (the mechanics live in :mod:`huselet.sandbox`):

- the isolation keys of a ``[runtimes.NAME]`` table, validated with the key
  path in every error (:func:`parse_isolation`);
- what the host can actually provide (:func:`probe_host`): root, unprivileged
  user namespaces, seccomp, cgroups and their controllers;
- whether to refuse to start or to run degraded (:func:`resolve`) — a host
  that lacks a feature the configuration asks for is refused with one clear
  message, unless ``allow_degraded = true`` says less isolation is acceptable;
- which unprivileged uid each function runs as (:class:`UidAllocator`).
"""

from __future__ import annotations

import os
import platform
import subprocess
from dataclasses import dataclass, field, replace
from pathlib import Path

from huselet.config import FunctionSettings
from huselet.config.table import ConfigTable
from huselet.errors import ConfigError
from huselet.log import get_logger
from huselet.runtime.base import RuntimeConfigError, StartFailed
from huselet.runtime.cgroups import CgroupHost
from huselet.runtime.uidlease import UID_LEASE_FILE, UidLeases

log = get_logger("runtime.isolation")

NETWORK_MODES = ("none", "host")


@dataclass(frozen=True)
class IsolationSettings:
    isolation: bool = True  # namespaces, read-only root, own uid, seccomp
    network: str = "none"
    uid_base: int = 200_000
    uid_count: int = 10_000
    seccomp: bool = True
    cgroups: bool = True
    cgroup_parent: str = "huselet"
    cgroup_pool: int = 64  # instance cgroups kept ready (a burst beyond mkdirs inline)
    pids_max: int = 128
    cpu_cores: float = 1.0  # 0: no CPU limit
    tmp_size_mb: int = 64
    nofile: int = 1024
    nproc: int | None = None  # RLIMIT_NPROC of a function's uid; None: uid_nproc() decides
    ro_paths: tuple[str, ...] = ()
    allow_degraded: bool = False
    # Filled in by resolve(): what the host could not provide.
    degraded: tuple[str, ...] = field(default=())


def parse_isolation(table: ConfigTable) -> IsolationSettings:
    """The isolation keys of a ``[runtimes.NAME]`` table (errors name ``runtimes.NAME.key``)."""
    d = IsolationSettings()
    settings = IsolationSettings(
        isolation=table.boolean("isolation", default=d.isolation),
        network=table.choice("network", NETWORK_MODES, default=d.network),
        uid_base=table.positive_int("uid_base", default=d.uid_base, minimum=1000),
        uid_count=table.positive_int("uid_count", default=d.uid_count),
        seccomp=table.boolean("seccomp", default=d.seccomp),
        cgroups=table.boolean("cgroups", default=d.cgroups),
        cgroup_parent=table.string("cgroup_parent", d.cgroup_parent, non_empty=True),
        cgroup_pool=table.non_negative_int("cgroup_pool", default=d.cgroup_pool),
        pids_max=table.positive_int("pids_max", default=d.pids_max, minimum=8),
        cpu_cores=table.number("cpu_cores", default=d.cpu_cores),
        tmp_size_mb=table.positive_int("tmp_size_mb", default=d.tmp_size_mb),
        nofile=table.positive_int("nofile", default=d.nofile, minimum=64),
        nproc=(
            None if table.optional("nproc") is None else table.positive_int("nproc", minimum=16)
        ),
        ro_paths=table.absolute_paths("ro_paths"),
        allow_degraded=table.boolean("allow_degraded", default=d.allow_degraded),
    )
    if ".." in settings.cgroup_parent.split("/"):
        raise ConfigError(table.key("cgroup_parent"), "must not contain ..")
    check_uid_range(table, settings.uid_base, settings.uid_count)
    return settings


def check_uid_range(table: ConfigTable, uid_base: int, uid_count: int) -> None:
    """Helper uids are 32-bit signed on the kernel's side of setresuid."""
    if uid_base + uid_count > 2**31:
        raise ConfigError(table.key("uid_count"), "range exceeds 2^31")


@dataclass(frozen=True)
class HostFeatures:
    root: bool
    arch_ok: bool
    userns: str | None  # None: works; else why not
    seccomp: bool
    cgroups: CgroupHost | None


def _probe_userns(uid: int) -> str | None:
    """Can an unprivileged process make user+PID+mount namespaces? None if yes."""
    from huselet.sandbox import linux  # only the daemon side probes; the import is cheap

    def preexec() -> None:
        os.setgroups([])
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)
        linux.unshare(linux.CLONE_NEWUSER | linux.CLONE_NEWPID | linux.CLONE_NEWNS)

    try:
        subprocess.run(
            ["/bin/true"],
            preexec_fn=preexec,
            check=True,
            timeout=10,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    except subprocess.SubprocessError as exc:
        return f"unprivileged user namespaces are not available ({exc})"
    except OSError as exc:
        return f"unprivileged user namespaces are not available ({exc.strerror})"
    return None


def probe_host(settings: IsolationSettings) -> HostFeatures:
    root = os.geteuid() == 0
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        status = ""
    return HostFeatures(
        root=root,
        arch_ok=platform.machine() == "x86_64",
        userns=_probe_userns(settings.uid_base) if root and settings.isolation else "not probed",
        seccomp="Seccomp:" in status,
        cgroups=CgroupHost.detect() if settings.cgroups else None,
    )


def resolve(settings: IsolationSettings, host: HostFeatures, runtime: str) -> IsolationSettings:
    """The settings the host can honour, or RuntimeConfigError saying what is missing."""
    problems: list[tuple[str, str]] = []  # (feature to turn off, why)
    if settings.isolation:
        if not host.root:
            problems.append(("isolation", f"the daemon runs as uid {os.geteuid()}, not root"))
        elif not host.arch_ok:
            arch = platform.machine()
            problems.append(("isolation", f"sandboxing supports x86_64 only, not {arch}"))
        elif host.userns is not None:
            problems.append(("isolation", host.userns))
        if settings.seccomp and not host.seccomp:
            problems.append(("seccomp", "the kernel has no seccomp support"))
    if settings.cgroups:
        if not host.root:
            problems.append(("cgroups", "cgroups need root"))
        elif host.cgroups is None:
            problems.append(("cgroups", "no usable cgroup hierarchy is mounted"))
        elif host.cgroups.missing():
            missing = ", ".join(host.cgroups.missing())
            problems.append(("cgroups", f"cgroup controllers missing: {missing}"))
    if not problems:
        return settings
    why = "; ".join(f"{what}: {reason}" for what, reason in problems)
    if not settings.allow_degraded:
        raise RuntimeConfigError(
            f"runtimes.{runtime}: this host cannot provide the configured isolation ({why}); "
            f"fix the host, or set runtimes.{runtime}.allow_degraded = true to run with less"
        )
    off = {what for what, _ in problems}
    log.warning("running with degraded isolation", runtime=runtime, missing=why)
    return replace(
        settings,
        isolation=settings.isolation and "isolation" not in off,
        seccomp=settings.seccomp and "seccomp" not in off and "isolation" not in off,
        cgroups=settings.cgroups and "cgroups" not in off,
        degraded=tuple(f"{what}: {reason}" for what, reason in problems),
    )


def identity(fn: FunctionSettings) -> str:
    """Who a function's sandboxes run as: its tenant and name (uids and zygotes are per identity).

    A function that moves to another tenant on reload gets a new uid and new
    zygotes, so nothing started for the previous owner is shared with the new one.
    """
    return fn.name if fn.tenant is None else f"{fn.tenant}/{fn.name}"


# RLIMIT_NPROC of a function's uid when ``nproc`` is not set: at least this...
NPROC_FLOOR = 4096
# ...and enough for every instance the function may have: each may hold a few
# tasks (the worker, a thread or child of the handler; the instance's cgroup
# ``pids_max`` is its own bound), plus the zygotes (two during a code update).
NPROC_PER_INSTANCE = 4
NPROC_ZYGOTES = 64


def uid_nproc(fn: FunctionSettings, configured: int | None) -> int:
    """RLIMIT_NPROC for ``fn``'s uid: ``nproc`` when configured, else sized to its instances.

    The limit counts every task of the uid, i.e. of all the function's
    instances together. A fixed 4096 stopped a function at ~4,000 instances
    with a "host limit" 503 that no host limit caused; by default it now
    grows with ``max_instances`` (fixed when the function's zygote is built),
    so what stops a big function is a real limit of the host (``pid_max``,
    ``threads-max``, memory, descriptors). A configured ``nproc`` is taken as
    it is: the operator chose that cap deliberately.
    """
    if configured is not None:
        return configured
    return max(NPROC_FLOOR, fn.max_instances * NPROC_PER_INSTANCE + NPROC_ZYGOTES)


class UidAllocator:
    """One unprivileged uid (and gid of the same number) per function identity (see identity()).

    Never reused while the daemon runs: a function's stray processes can
    never share an identity with a later function. While the runtime runs,
    each uid is also leased host-wide (:mod:`huselet.runtime.uidlease`): a
    uid another daemon holds is skipped, so two daemons with the same range
    never give two functions one uid.
    """

    def __init__(self, base: int, count: int) -> None:
        self.base = base
        self.count = count
        self._by_function: dict[str, int] = {}
        self._cursor = 0  # next offset in the range to try
        self.leases: UidLeases | None = None
        self.taken_elsewhere = 0  # uids of the range skipped: leased by another holder

    def open_leases(self, path: Path = UID_LEASE_FILE) -> None:
        """Lease every uid handed out from now on (runtimes open this before any start)."""
        self.leases = UidLeases(path)

    def close_leases(self) -> None:
        if self.leases is not None:
            self.leases.close()
            self.leases = None

    def uid_for(self, function: str) -> int:
        uid = self._by_function.get(function)
        if uid is None:
            uid = self._next_free()
            self._by_function[function] = uid
        return uid

    def _next_free(self) -> int:
        while self._cursor < self.count:
            uid = self.base + self._cursor
            self._cursor += 1
            if self.leases is None or self.leases.take(uid):
                return uid
            self.taken_elsewhere += 1
        held = f"; {self.taken_elsewhere} held by other daemons" if self.taken_elsewhere else ""
        raise StartFailed(f"no unprivileged uid left for a new function (uid_count{held})")
