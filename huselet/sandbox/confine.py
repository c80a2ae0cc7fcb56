"""The two confinement steps of the fork runtime: per function, then per instance.

**Per function** (:func:`enter_function_sandbox`, run once by the zygote while
it is still root, *before* it imports any function code):

- new mount, network, IPC and UTS namespaces. The network namespace is the
  expensive one (~1 ms), so it is made once here and every instance inherits
  it for free: it holds only ``lo`` — no route out. Instances never need the
  daemon's socket by path: the daemon hands each one an already connected link;
- the read-only root of :mod:`huselet.sandbox.rootfs` (pivot_root);
- hostname = function name; then drop to the function's own uid/gid (all
  capabilities go with it), ``no_new_privs``, the daemon as death signal,
  and the zygote seccomp filter.

From then on function code — its import-time init included — runs without
any host privilege. That is why the per-instance step cannot rely on root:

**Per instance** (:func:`confine_instance`, run in each child): the child was
cloned into a new *user* namespace together with new PID, mount and IPC
namespaces (creating those needs privilege only inside the new user
namespace). It maps its uid onto itself, mounts its private ``/tmp`` and the
``/proc`` of its PID namespace (it is PID 1 there: it cannot see or signal the
daemon, the zygote or any other instance), drops every capability, sets
rlimits, and stacks the instance seccomp filter that takes ``mount`` and
namespace creation away again.
"""

from __future__ import annotations

import os
import resource
import signal
from dataclasses import dataclass, field
from typing import Any

from huselet.sandbox import linux, rootfs, seccomp

# The environment variable that carries a plan to :mod:`huselet.sandbox.launch`.
PLAN_ENV = "HUSELET_SANDBOX_PLAN"


class SandboxError(Exception):
    """A confinement step failed; the message names the step."""


@dataclass(frozen=True)
class SandboxPlan:
    """What the daemon asks of a zygote and its instances (sent as a msgpack map)."""

    function: str
    package: str
    handler: str
    isolate: bool = True
    staging: str = ""
    ro_paths: tuple[str, ...] = ()
    network: str = "none"  # "none": loopback only; "host": the host's network
    uid: int | None = None
    gid: int | None = None
    userns: bool = True  # per-instance user+PID+mount+IPC namespaces
    seccomp: bool = True
    tmp_size_mb: int = 64
    nofile: int = 1024
    nproc: int = 4096
    address_space_bytes: int | None = None  # RLIMIT_AS for instances, when no cgroup limits
    daemon_pid: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def to_wire(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.__dict__.items()}

    @classmethod
    def from_wire(cls, raw: dict[str, Any]) -> SandboxPlan:
        known = {k: v for k, v in raw.items() if k in cls.__dataclass_fields__}
        known["ro_paths"] = tuple(known.get("ro_paths", ()))
        return cls(**known)

    def instance_clone_flags(self) -> int:
        if self.isolate and self.userns:
            return linux.CLONE_NEWUSER | linux.CLONE_NEWPID | linux.CLONE_NEWNS | linux.CLONE_NEWIPC
        return 0


def _step(what: str, fn: Any, *args: Any, **kw: Any) -> Any:
    try:
        return fn(*args, **kw)
    except OSError as exc:
        raise SandboxError(f"{what}: {exc}") from None


def enter_function_sandbox(plan: SandboxPlan) -> list[str]:
    """Confine the calling (root, single-threaded) zygote. See the module docstring.

    Returns the read-only paths that live under /tmp, which each instance's
    private /tmp must show again (pass them to :func:`confine_instance`).
    """
    if not plan.isolate:
        _set_rlimits(plan, address_space=None)
        return []
    _step("architecture", linux.check_arch)
    flags = linux.CLONE_NEWNS | linux.CLONE_NEWIPC | linux.CLONE_NEWUTS
    if plan.network == "none":
        flags |= linux.CLONE_NEWNET
    _step("namespaces", linux.unshare, flags)
    if plan.network == "none":
        _step("loopback", linux.loopback_up)
    _step("hostname", linux.sethostname, plan.function[:64])
    binds = rootfs.plan_binds(plan.package, plan.ro_paths)
    _step("root filesystem", rootfs.build, plan.staging, binds, tmp_size_mb=plan.tmp_size_mb)
    _step("chdir", os.chdir, plan.package)
    if plan.uid is not None and plan.gid is not None:
        _step("groups", os.setgroups, [])
        _step("gid", os.setresgid, plan.gid, plan.gid, plan.gid)
        _step("uid", os.setresuid, plan.uid, plan.uid, plan.uid)
        # A uid change makes the process non-dumpable: /proc/<pid>/ files turn
        # root-owned and the children could not write their own uid_map.
        _step("dumpable", linux.set_dumpable, True)
    # The death signal is cleared by the uid change above: set it after.
    _step("death signal", linux.set_pdeathsig, signal.SIGKILL)
    if plan.daemon_pid and os.getppid() != plan.daemon_pid:
        raise SandboxError("the daemon exited while the zygote started")
    _step("no_new_privs", linux.set_no_new_privs)
    _set_rlimits(plan, address_space=None)
    if plan.seccomp:
        _step("seccomp", linux.install_seccomp, seccomp.zygote_filter())
        _instance_filter()
    return rootfs.under_tmp(binds)


_instance_program: linux.SeccompProgram | None = None


def _instance_filter() -> linux.SeccompProgram:
    # Built once (in the zygote, before forking) rather than by every instance.
    global _instance_program
    if _instance_program is None:
        _instance_program = linux.SeccompProgram(seccomp.instance_filter())
    return _instance_program


class InstanceConfinement:
    """:func:`confine_instance`, prepared once in the zygote and applied in each instance.

    Every path, map, flag and ctypes argument is built here, so an instance's
    confinement is one loop of system calls: the Python objects a freshly
    cloned child touches are the pages it copies (bench_density: PSS per idle
    instance). A libc call is kept as its ctypes function and converted
    arguments (a negative result is its failure), not as a Python wrapper.
    """

    def __init__(self, plan: SandboxPlan, keep_in_tmp: list[str]) -> None:
        # (what failed, call, arguments, a failure that may be ignored, the
        # libc call a negative result comes from, or "")
        steps: list[tuple[str, Any, tuple[Any, ...], bool, str]] = []

        def add(what: str, call: Any, args: tuple[Any, ...] = (), optional: bool = False) -> None:
            libc = ""
            if isinstance(call, linux.PreparedCall):
                call, args, libc = call.fn, call.args, call.what
            steps.append((what, call, args, optional, libc))

        if plan.isolate and plan.userns:
            # Not os.getuid(): inside the new user namespace it reads 65534 until mapped.
            uid = plan.uid if plan.uid is not None else os.geteuid()
            gid = plan.gid if plan.gid is not None else os.getegid()
            for name, data in (
                ("setgroups", "deny"),
                ("uid_map", f"{uid} {uid} 1"),
                ("gid_map", f"{gid} {gid} 1"),
            ):
                path = f"/proc/self/{name}".encode()
                add(f"id maps: {name}", _write_file, (path, data.encode()))
            for what, call, args in rootfs.private_tmp_steps(plan.tmp_size_mb, keep_in_tmp):
                add(what, call, args)
            proc_flags = linux.MS_NOSUID | linux.MS_NODEV | linux.MS_NOEXEC
            add("proc", linux.prepared_mount("proc", "/proc", "proc", proc_flags))
            # As linux.drop_capabilities: kernels before 4.3 have no ambient set.
            ambient = linux.prepared_prctl(linux.PR_CAP_AMBIENT, linux.PR_CAP_AMBIENT_CLEAR_ALL)
            add("capabilities", ambient, optional=True)
            add("capabilities", linux.prepared_capset_empty())
        for which, value in _rlimits(plan, address_space=plan.address_space_bytes):
            add(f"rlimit {which}", resource.setrlimit, (which, (value, value)))
        if plan.isolate and plan.seccomp:
            add("seccomp", _instance_filter().load)
        self.steps = tuple(steps)
        # What the loop in apply() reads: only the call and its arguments (each
        # object it unpacks is a reference count written, a page copied).
        self.calls = tuple((call, args) for _, call, args, _, _ in steps)

    def apply(self) -> None:
        for step, (call, args) in enumerate(self.calls):
            try:
                result = call(*args)
            except OSError as exc:
                self._failed(step, exc)
            else:
                # A libc call (ctypes) fails with a negative result and errno set.
                if result is not None and result < 0:
                    self._failed(step, linux.failed(self.steps[step][4]))

    def _failed(self, step: int, exc: OSError) -> None:
        what, _, _, optional, _ = self.steps[step]
        if not optional:
            raise SandboxError(f"{what}: {exc}") from None


def _write_file(path: bytes, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def confine_instance(plan: SandboxPlan, keep_in_tmp: list[str]) -> None:
    """Confine a freshly cloned instance, before it runs any request."""
    InstanceConfinement(plan, keep_in_tmp).apply()


def _rlimits(plan: SandboxPlan, *, address_space: int | None) -> list[tuple[int, int]]:
    limits = [(resource.RLIMIT_CORE, 0), (resource.RLIMIT_NOFILE, plan.nofile)]
    if plan.isolate:
        # Counted per uid (all of this function's processes): a backstop; the
        # per-instance bound is the cgroup pids limit.
        limits.append((resource.RLIMIT_NPROC, plan.nproc))
    if address_space:
        limits.append((resource.RLIMIT_AS, address_space))
    return limits


def _set_rlimits(plan: SandboxPlan, *, address_space: int | None) -> None:
    for which, value in _rlimits(plan, address_space=address_space):
        _step(f"rlimit {which}", resource.setrlimit, which, (value, value))
