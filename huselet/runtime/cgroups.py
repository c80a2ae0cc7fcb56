"""Per-instance cgroups (memory, CPU, pids) for the sandboxing runtimes, v1 and v2.

Detection (:meth:`CgroupHost.detect`) reads ``/proc/self/mountinfo``: a pure
v2 host has ``cgroup2`` with the controllers we need; a v1/hybrid host (this
VM, older distributions) has one ``cgroup`` mount per controller. We use
``memory``, ``pids`` and ``cpu``. (Not the v1 ``freezer``: every hierarchy a
process joins is one more migration per start — each can stall for an RCU
grace period — and the pids limit already stops a fork bomb from outrunning
the kill loop of :meth:`Cgroup.kill_all`.)

Layout: ``<hierarchy>/<subtree>/i-N`` for instances, where the subtree is
this daemon's own (:mod:`huselet.runtime.identity`: node id + run dir, inside
the unit's delegated group on v2) — a *pool*
created ahead of need, so starting an instance moves a pid instead of
mkdir'ing (~0.2 ms per hierarchy on v1) — and ``.../z-<function>`` for
zygotes. Released groups are emptied (every pid killed), their counters
remembered, and reused. Everything under the subtree is removed at
start (leftovers of a daemon that was SIGKILLed) and on stop.

Self-placement (v1): a group acquired for a uid has its ``cgroup.procs``
files chowned to that uid, so the function's zygote — running as that uid —
can move *itself* into the group for a clone (:meth:`Cgroup.open_dirs` hands
it ``O_PATH`` directory handles; it opens ``cgroup.procs`` with its own
credentials, which the kernel lets move only that uid's processes). A group
keeps its owner for life: it goes back to that owner's free list, never to
another uid (a handle kept by one function must not reach another's group).

The pool of groups (made ahead, reused, reserved per owner) is
:class:`huselet.runtime.cgrouppool.CgroupPool`.

OOM detection: the kernel's per-cgroup ``oom_kill`` counter (v1
``memory.oom_control``, v2 ``memory.events``), compared with its value when
the instance got the group.
"""

from __future__ import annotations

import errno
import os
import signal
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

import trio

from huselet.log import get_logger
from huselet.runtime.base import RuntimeConfigError

log = get_logger("runtime.cgroups")

V1_CONTROLLERS = ("memory", "pids", "cpu")
REQUIRED = ("memory", "pids", "cpu")
CPU_PERIOD_US = 100_000
V1_DEFAULT_PERIOD_US = 100_000  # cpu.cfs_period_us of a new v1 group (the kernel's)
KILL_DEADLINE_S = 2.0
_JOIN_THREADS = trio.CapacityLimiter(4)


class CgroupError(RuntimeConfigError):
    """cgroups are missing or unusable for what the configuration asks."""


@dataclass(frozen=True)
class CgroupHost:
    version: int  # 1 or 2
    roots: dict[str, Path]  # v1: controller -> mount; v2: {"unified": mount}

    @classmethod
    def detect(cls, mountinfo: str = "/proc/self/mountinfo") -> CgroupHost | None:
        v1: dict[str, Path] = {}
        v2: Path | None = None
        try:
            lines = Path(mountinfo).read_text().splitlines()
        except OSError:
            return None
        for line in lines:
            left, _, right = line.partition(" - ")
            fields, rfields = left.split(), right.split()
            if len(fields) < 5 or len(rfields) < 3:
                continue
            mount_point, fstype, super_opts = fields[4], rfields[0], rfields[2]
            if fstype == "cgroup2":
                v2 = Path(mount_point)
            elif fstype == "cgroup":
                for opt in super_opts.split(","):
                    if opt in V1_CONTROLLERS and opt not in v1:
                        v1[opt] = Path(mount_point)
        if v2 is not None:
            try:
                enabled = (v2 / "cgroup.controllers").read_text().split()
            except OSError:
                enabled = []
            if all(c in enabled for c in REQUIRED):
                return cls(2, {"unified": v2})
        if v1:
            return cls(1, v1)
        return None

    def missing(self) -> list[str]:
        if self.version == 2:
            return []
        return [c for c in REQUIRED if c not in self.roots]

    def describe(self) -> str:
        return f"v{self.version} ({', '.join(f'{k}={v}' for k, v in self.roots.items())})"


def hierarchy_roots(mountinfo: str = "/proc/self/mountinfo") -> list[Path]:
    """Every mounted cgroup hierarchy (v1 and v2), including ones we do not use."""
    roots = []
    try:
        for line in Path(mountinfo).read_text().splitlines():
            left, _, right = line.partition(" - ")
            if right.split()[:1] in (["cgroup"], ["cgroup2"]):
                roots.append(Path(left.split()[4]))
    except (OSError, IndexError):
        pass
    return roots


def remove_empty_tree(rel: str) -> None:
    """rmdir ``rel`` and its parents in every hierarchy, as far as they are empty.

    For groups someone else created for us (runc makes its cgroup path in
    every hierarchy it knows, and removes only the leaf).
    """
    parts = rel.strip("/").split("/")
    for root in hierarchy_roots():
        for i in range(len(parts), 0, -1):
            try:
                (root / "/".join(parts[:i])).rmdir()
            except OSError:
                break


def parent_pid(pid: int) -> int | None:
    """The parent of ``pid`` from /proc (None if it is gone)."""
    stat = read_proc(f"/proc/{pid}/stat")
    if stat is None:
        return None
    # The command name may contain spaces and parentheses: fields follow the last ')'.
    fields = stat[stat.rindex(")") + 2 :].split()
    return int(fields[1])


def read_proc(path: str) -> str | None:
    """A small /proc file in one read (no pathlib, no buffered file: once per start)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        return os.read(fd, 65536).decode(errors="replace")
    except OSError:
        return None
    finally:
        os.close(fd)


def write_control(path: Path, value: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


class Cgroup:
    """One group, spread over every hierarchy we use."""

    def __init__(self, host: CgroupHost, rel: str) -> None:
        self.host = host
        self.rel = rel
        self.dirs = {name: root / rel for name, root in host.roots.items()}
        self.memory_bytes: int | None = None
        self.oom_baseline = 0
        self.owner: int | None = None  # uid whose zygote may place itself here (v1)

    @property
    def _mem_dir(self) -> Path:
        return self.dirs["unified" if self.host.version == 2 else "memory"]

    def path_for(self, controller: str) -> Path | None:
        return self.dirs.get("unified" if self.host.version == 2 else controller)

    def create(self) -> bool:
        """Make the group's directories; True if every one was new (kernel defaults)."""
        fresh = True
        for d in self.dirs.values():
            try:
                os.mkdir(d)
            except FileExistsError:
                fresh = False
        return fresh

    def join(self, pid: int) -> None:
        for d in self.dirs.values():
            write_control(d / "cgroup.procs", str(pid))

    def own(self, uid: int) -> None:
        """Let ``uid`` move its own processes in: chown ``cgroup.procs`` everywhere (v1)."""
        for d in self.dirs.values():
            os.chown(d / "cgroup.procs", uid, -1)
        self.owner = uid

    def open_dirs(self) -> list[int]:
        """``O_PATH`` handles of the group's directories, one per hierarchy (caller closes).

        Enough to ``openat`` its ``cgroup.procs`` with the opener's own
        credentials, nothing more: an ``O_PATH`` handle reads and writes nothing.
        """
        fds: list[int] = []
        try:
            for d in self.dirs.values():
                fds.append(os.open(d, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC))
        except BaseException:
            for fd in fds:
                os.close(fd)
            raise
        return fds

    async def join_async(self, pid: int) -> None:
        """:meth:`join` in a worker thread: a v1 migration can wait out an RCU
        grace period (milliseconds), which must not stall the event loop."""
        await trio.to_thread.run_sync(self.join, pid, limiter=_JOIN_THREADS)

    def contains(self, pid: int) -> bool:
        """True if ``pid`` is in this group (checked on the memory hierarchy)."""
        text = read_proc(f"/proc/{pid}/cgroup")
        if text is None:
            return False
        want = "/" + self.rel
        for line in text.splitlines():
            _, controllers, path = line.split(":", 2)
            if self.host.version == 2 and controllers == "" and path == want:
                return True
            if self.host.version == 1 and "memory" in controllers.split(",") and path == want:
                return True
        return False

    def set_memory(self, limit: int) -> None:
        if self.memory_bytes == limit:
            return
        d = self._mem_dir
        if self.host.version == 2:
            write_control(d / "memory.max", str(limit))
            if (d / "memory.swap.max").exists():
                write_control(d / "memory.swap.max", "0")
        else:
            # memsw (memory+swap) must stay >= memory: order the writes by direction.
            memsw = d / "memory.memsw.limit_in_bytes"
            try:
                write_control(d / "memory.limit_in_bytes", str(limit))
                if memsw.exists():
                    write_control(memsw, str(limit))
            except OSError as exc:
                if exc.errno != errno.EINVAL or not memsw.exists():
                    raise
                write_control(memsw, str(limit))
                write_control(d / "memory.limit_in_bytes", str(limit))
        self.memory_bytes = limit

    def set_pids(self, limit: int | None) -> None:
        d = self.path_for("pids")
        if d is not None:
            write_control(d / "pids.max", "max" if limit is None else str(limit))

    def set_cpu(self, cores: float | None, *, fresh: bool = False) -> None:
        """The CPU quota per ``CPU_PERIOD_US``; ``fresh``: the group was just made.

        A new v1 group's period is already the kernel's default, 100 ms (==
        ``CPU_PERIOD_US``), and each write to ``cpu.cfs_*`` re-applies the whole
        bandwidth setting (~0.12 ms of kernel time): a fresh group gets the quota only.
        """
        d = self.path_for("cpu")
        if d is None:
            return
        quota = -1 if not cores else max(1000, int(cores * CPU_PERIOD_US))
        if self.host.version == 2:
            write_control(d / "cpu.max", f"{'max' if quota < 0 else quota} {CPU_PERIOD_US}")
        else:
            if not fresh or CPU_PERIOD_US != V1_DEFAULT_PERIOD_US:
                write_control(d / "cpu.cfs_period_us", str(CPU_PERIOD_US))
            write_control(d / "cpu.cfs_quota_us", str(quota))

    def oom_kills(self) -> int:
        name = "memory.events" if self.host.version == 2 else "memory.oom_control"
        try:
            for line in (self._mem_dir / name).read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == "oom_kill":
                    return int(value)
        except (OSError, ValueError):
            pass
        return 0

    def memory_usage(self) -> int:
        name = "memory.current" if self.host.version == 2 else "memory.usage_in_bytes"
        try:
            return int((self._mem_dir / name).read_text())
        except (OSError, ValueError):
            return 0

    def pids(self) -> list[int]:
        seen: set[int] = set()
        for d in self.dirs.values():
            try:
                seen.update(int(p) for p in (d / "cgroup.procs").read_text().split())
            except (OSError, ValueError):
                pass
        return sorted(seen)

    def _signal_all(self, spare: Collection[int] = ()) -> bool:
        """SIGKILL every member but ``spare``; False if there were none (spared ones count)."""
        if not spare and self.host.version == 2 and (self._mem_dir / "cgroup.kill").exists():
            if not self.pids():
                return False
            write_control(self._mem_dir / "cgroup.kill", "1")
            return True
        pids = self.pids()
        for pid in pids:
            if pid in spare:
                continue
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return bool(pids)

    async def kill_all(
        self, timeout_s: float = KILL_DEADLINE_S, spare: Collection[int] = ()
    ) -> bool:
        """Kill every process in the group and wait until it is empty (True) or the deadline.

        ``spare``: pids never signalled, only waited for — a zygote that placed
        itself here for a clone and leaves by itself within moments.
        """
        with trio.move_on_after(timeout_s):
            while True:
                try:
                    if not self._signal_all(spare):
                        return True
                except OSError as exc:
                    if exc.errno == errno.ENOENT:
                        return True
                    raise
                await trio.sleep(0.002)
        return False

    def remove_quietly(self) -> None:
        """Remove if empty; a shared parent still in use by another runtime stays."""
        for d in self.dirs.values():
            try:
                d.rmdir()
            except OSError:
                pass

    def remove(self) -> bool:
        ok = True
        for d in self.dirs.values():
            try:
                d.rmdir()
            except FileNotFoundError:
                pass
            except OSError as exc:
                ok = False
                log.warning("cannot remove cgroup", path=str(d), error=exc.strerror)
        return ok
