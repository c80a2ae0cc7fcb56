"""Restart recovery: what a previous run of this node left behind, found and cleaned at start.

A daemon killed with SIGKILL runs no cleanup. Its instances and zygotes die
with it (parent-death signal, own sessions, cgroups) and the components clear
their own leftovers as they start (the image store its ``.part`` downloads,
the link server a configured function's socket, the oci runtime its runc
containers). :meth:`RecoverySweep.sweep` — run by the daemon once, after its
directories exist and before any component starts — is the belt and braces
for everything else, and the one place that says what was left:

- **processes** whose environment carries the daemon's own markers:
  ``HUSELET_FUNCTION`` plus ``HUSELET_LINK`` under ``run_dir/fn/`` (every
  exec'd worker) or ``HUSELET_IMAGE`` under ``state_dir`` (zygotes, forked
  and sandboxed instances of image-backed code). Killed with their process
  group. Nothing without a positive match is ever signalled;
- **cgroups** under this daemon's own subtree (``<cgroup_parent>/<node id +
  run dir>/<runtime>``, see :mod:`huselet.runtime.identity`) of the configured ``fork``
  and ``bwrap`` runtimes with cgroups on: members killed, groups removed
  (the runtime would do the same when it starts; here it is counted). For
  ``oci`` only the members are killed (counted as processes): its groups are
  runc's, removed by ``runc delete`` when the runtime starts. This is what
  ends a container that was busy when the daemon died: it is re-parented to
  init, not killed, since a detached runc container cannot carry a
  parent-death signal — its worker only quits once its handler returns and
  it sees the link closed;
- **sockets** in ``run_dir/fn/`` and the admin socket that nobody listens on;
- **temp files** the daemon writes beside the files it replaces atomically:
  ``*.tmp``/``*.part`` in ``state_dir``, ``cache/packed`` and ``cache/extract``;
- **staging dirs** of the sandboxes, ``run_dir/sandbox/<runtime>/*``: only
  trees of empty directories are removed (``rmdir`` never crosses a mount).

A live daemon answering on the admin socket is not a previous run: the sweep
refuses to start (:class:`~huselet.admin.errors.AdminSocketInUse`) before it
touches anything of that daemon's.

The result is the ``recovery`` health loop: ``ok`` with a detail like
"previous run left 3 processes, 2 sockets: cleaned", ``degraded`` when
something could not be cleaned, and counters per kind.
"""

from __future__ import annotations

import errno
import os
import signal
import socket
import stat
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from huselet.admin.errors import AdminSocketInUse
from huselet.config import Config
from huselet.health.counters import HealthCounter
from huselet.health.supervisor import HealthState, LoopReport
from huselet.log import get_logger
from huselet.runtime.cgroups import Cgroup, CgroupHost, CgroupPool
from huselet.runtime.identity import sandbox_subtree

log = get_logger("health.recovery")

KINDS = ("processes", "cgroups", "sockets", "temp_files", "staging_dirs")
_WORDS = {
    "processes": ("process", "processes"),
    "cgroups": ("cgroup", "cgroups"),
    "sockets": ("socket", "sockets"),
    "temp_files": ("temp file", "temp files"),
    "staging_dirs": ("staging dir", "staging dirs"),
}
# Runtimes that keep a CgroupPool under <cgroup_parent>/<name> (oci's groups are runc's).
CGROUP_POOL_RUNTIMES = ("fork", "bwrap")
TEMP_SUFFIXES = (".tmp", ".part")
PROBE_TIMEOUT_S = 0.5
KILL_WAIT_S = 3.0


@dataclass
class SweepResult:
    """What the sweep found per kind, what it cleaned and what it could not."""

    found: Counter[str] = field(default_factory=Counter)
    cleaned: Counter[str] = field(default_factory=Counter)
    failed: Counter[str] = field(default_factory=Counter)
    duration_s: float = 0.0

    @property
    def state(self) -> HealthState:
        return HealthState.DEGRADED if sum(self.failed.values()) else HealthState.OK

    def detail(self) -> str:
        left = _phrase(self.found)
        if not left:
            return "previous run left nothing"
        if not sum(self.failed.values()):
            return f"previous run left {left}: cleaned"
        return f"previous run left {left}: {_phrase(self.failed)} could not be cleaned"

    def counters(self) -> dict[str, int]:
        out = {kind: self.found[kind] for kind in KINDS if self.found[kind]}
        out[HealthCounter.FAILED] = sum(self.failed.values())
        out[HealthCounter.SWEEP_MS] = round(self.duration_s * 1000)
        return out


def _phrase(counts: Mapping[str, int]) -> str:
    parts = []
    for kind in KINDS:
        n = counts.get(kind, 0)
        if n:
            one, many = _WORDS[kind]
            parts.append(f"{n} {one if n == 1 else many}")
    return ", ".join(parts)


class RecoverySweep:
    """The startup sweep and, afterwards, the ``recovery`` health loop reporting it."""

    name = "recovery"

    def __init__(self, config: Config, runtimes: Mapping[str, Any] | None = None) -> None:
        self.node = config.node
        self.run_dir = config.node.run_dir
        self.state_dir = config.node.state_dir
        self.admin_socket = config.admin.socket
        self.runtimes = dict(runtimes or {})
        self.result: SweepResult | None = None
        self._proc = Path("/proc")

    # --- the health loop ------------------------------------------------------------

    async def run(self, report: LoopReport) -> None:
        """Publish the sweep's result; there is nothing to watch after the start."""
        result = self.result
        if result is None:
            report.set(HealthState.OK, "no startup sweep ran")
            return
        for key, value in result.counters().items():
            report.counters[key] = value
        cleaned = _phrase(result.cleaned)
        if cleaned:
            report.action(f"cleaned {cleaned} left by a previous run")
        report.set(result.state, result.detail())

    # --- the sweep -----------------------------------------------------------------------

    async def sweep(self) -> SweepResult:
        started = time.monotonic()
        result = SweepResult()
        await self._refuse_live_daemon()
        await self._kill_processes(result)
        await self._clear_cgroups(result)
        await self._clear_sockets(result)
        self._clear_temp_files(result)
        self._clear_staging(result)
        for counts in (result.found, result.cleaned, result.failed):
            counts += Counter()  # drops the kinds that stayed at zero
        result.duration_s = time.monotonic() - started
        self.result = result
        log.info(
            "recovery sweep done",
            detail=result.detail(),
            found=dict(result.found),
            failed=dict(result.failed),
            duration_ms=round(result.duration_s * 1000, 1),
        )
        return result

    async def _refuse_live_daemon(self) -> None:
        if await _socket_state(self.admin_socket) == "live":
            raise AdminSocketInUse(
                f"another huselet is already running with its admin socket at {self.admin_socket}"
            )

    # processes -------------------------------------------------------------------

    def _marker(self, pid: int) -> str | None:
        """Which of our markers ``pid``'s environment carries, or None (not ours)."""
        try:
            raw = (self._proc / str(pid) / "environ").read_bytes()
        except OSError:
            return None  # gone, a kernel thread, or not ours to read
        env: dict[bytes, bytes] = {}
        for item in raw.split(b"\0"):
            key, sep, value = item.partition(b"=")
            if sep:
                env[key] = value
        if b"HUSELET_FUNCTION" not in env:
            return None
        link = env.get(b"HUSELET_LINK")
        if link is not None and _under(os.fsdecode(link), [self.run_dir / "fn"]):
            return "HUSELET_LINK"
        image = env.get(b"HUSELET_IMAGE")
        if image is not None and _under(os.fsdecode(image), [self.state_dir]):
            return "HUSELET_IMAGE"
        return None

    def find_processes(self) -> dict[int, str]:
        """Processes of a previous run of this node: ``{pid: marker}``."""
        spared = _ancestors(os.getpid())  # ourselves and whoever started us
        found = {}
        for entry in os.listdir(self._proc):
            if not entry.isdigit() or int(entry) in spared:
                continue
            marker = self._marker(int(entry))
            if marker is not None:
                found[int(entry)] = marker
        return found

    async def _kill_processes(self, result: SweepResult) -> None:
        pidfds: list[int] = []
        try:
            for pid, marker in sorted(self.find_processes().items()):
                result.found["processes"] += 1
                try:
                    pidfd = os.pidfd_open(pid)
                except ProcessLookupError:
                    result.cleaned["processes"] += 1  # gone between the scan and now
                    continue
                # The pid cannot be reused while we hold its pidfd: check it again.
                if self._marker(pid) is None:
                    os.close(pidfd)
                    result.found["processes"] -= 1
                    continue
                log.warning(
                    "killing a process left by a previous run",
                    pid=pid,
                    marker=marker,
                    command=_command(pid),
                )
                try:
                    if os.getpgid(pid) == pid:
                        os.killpg(pid, signal.SIGKILL)  # its group: what it spawned too
                    signal.pidfd_send_signal(pidfd, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                except OSError as exc:
                    log.error("cannot kill a leftover process", pid=pid, error=exc.strerror)
                    os.close(pidfd)
                    result.failed["processes"] += 1
                    continue
                pidfds.append(pidfd)
            await _wait_exited(pidfds, result)
        finally:
            for fd in pidfds:
                os.close(fd)

    # cgroups ---------------------------------------------------------------------

    async def _clear_cgroups(self, result: SweepResult) -> None:
        host: CgroupHost | None = None
        for name in (*CGROUP_POOL_RUNTIMES, "oci"):
            iso = getattr(self.runtimes.get(name), "isolation", None)
            if iso is None or not getattr(iso, "cgroups", False):
                continue
            host = host or CgroupHost.detect()
            if host is None:
                return
            # This daemon's own subtree only: another daemon's sandboxes are not ours.
            subtree = sandbox_subtree(host, iso.cgroup_parent, self.node, name)
            groups = _groups_below(host, subtree)
            if not groups:
                continue
            members: set[int] = set()
            for group in groups:
                members.update(group_pids(host, group))
            if members:
                log.warning(
                    "killing processes in cgroups left by a previous run",
                    subtree=subtree,
                    pids=sorted(members),
                    commands=[_command(pid) for pid in sorted(members)][:10],
                )
            result.found["processes"] += len(members)
            if name == "oci":
                # runc made these groups and removes them (``runc delete`` at the
                # runtime's start); the containers in them must not wait for that.
                for group in groups:
                    await Cgroup(host, group).kill_all()
            else:
                result.found["cgroups"] += len(groups)
                pool = CgroupPool(host, subtree, target_free=0, pids_max=None, cpu_cores=None)
                await pool.remove_subtree()
                remaining = min(len(groups), len(_groups_below(host, subtree, include_base=True)))
                result.failed["cgroups"] += remaining
                result.cleaned["cgroups"] += len(groups) - remaining
                log.warning(
                    "removed cgroups left by a previous run",
                    subtree=subtree,
                    groups=len(groups),
                    remaining=remaining,
                )
            alive = {pid for pid in members if _alive(pid)}
            result.failed["processes"] += len(alive)
            result.cleaned["processes"] += len(members) - len(alive)

    # sockets ---------------------------------------------------------------------

    async def _clear_sockets(self, result: SweepResult) -> None:
        candidates = [self.admin_socket]
        fn_dir = self.run_dir / "fn"
        try:
            candidates += sorted(fn_dir / name for name in os.listdir(fn_dir))
        except OSError:
            pass
        for path in candidates:
            state = await _socket_state(path)
            if state in ("absent", "not a socket"):
                continue
            if state == "live":
                # Someone listens on a socket of ours (not our admin socket: checked).
                log.warning("a socket in the run directory is in use; leaving it", path=str(path))
                continue
            _remove_leftover(path, "sockets", "a socket", result)

    # files ---------------------------------------------------------------------------

    def _clear_temp_files(self, result: SweepResult) -> None:
        cache = self.state_dir / "cache"
        for directory in (self.state_dir, cache / "packed", cache / "extract"):
            try:
                names = sorted(os.listdir(directory))
            except OSError:
                continue
            for name in names:
                if not name.endswith(TEMP_SUFFIXES):
                    continue
                path = directory / name
                try:
                    if not stat.S_ISREG(os.lstat(path).st_mode):
                        continue
                except OSError:
                    continue
                _remove_leftover(path, "temp_files", "a temp file", result)

    def _clear_staging(self, result: SweepResult) -> None:
        sandbox = self.run_dir / "sandbox"
        try:
            runtimes = sorted(os.listdir(sandbox))
        except OSError:
            return
        for runtime in runtimes:
            try:
                entries = sorted(os.listdir(sandbox / runtime))
            except OSError:
                continue
            for name in entries:
                path = sandbox / runtime / name
                result.found["staging_dirs"] += 1
                if _remove_empty_tree(path):
                    result.cleaned["staging_dirs"] += 1
                    log.info("removed a staging dir left by a previous run", path=str(path))
                else:
                    result.failed["staging_dirs"] += 1
                    log.error("a leftover staging dir is not empty; leaving it", path=str(path))


# --- helpers -----------------------------------------------------------------------------


def _under(value: str, roots: Iterable[Path]) -> bool:
    path = os.path.normpath(value)
    for root in roots:
        for form in {os.path.normpath(root), os.path.realpath(root)}:
            if path.startswith(form.rstrip("/") + "/"):
                return True
    return False


def _ancestors(pid: int) -> set[int]:
    out = {pid}
    while pid > 1:
        try:
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            break
        out.add(pid)
    return out


def _command(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return "?"
    return raw.replace(b"\0", b" ").decode("utf-8", "replace").strip()[:200]


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


async def _wait_exited(pidfds: list[int], result: SweepResult) -> None:
    """Wait (bounded) until every signalled process exited; count the outcome."""
    exited = 0
    with trio.move_on_after(KILL_WAIT_S):
        for fd in pidfds:
            await trio.lowlevel.wait_readable(fd)
            exited += 1
    result.cleaned["processes"] += exited
    if exited < len(pidfds):
        log.error("leftover processes did not exit after SIGKILL", count=len(pidfds) - exited)
        result.failed["processes"] += len(pidfds) - exited


async def _socket_state(path: Path) -> str:
    """``absent``, ``not a socket``, ``stale`` (nobody listens) or ``live``."""
    try:
        st = os.lstat(path)
    except OSError:
        return "absent"
    if not stat.S_ISSOCK(st.st_mode):
        return "not a socket"
    probe = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    with probe:
        try:
            with trio.move_on_after(PROBE_TIMEOUT_S):
                await probe.connect(str(path))
        except (ConnectionRefusedError, FileNotFoundError):
            return "stale"
        except OSError as exc:
            if exc.errno in (errno.ECONNREFUSED, errno.ENOENT):
                return "stale"
            return "live"  # cannot tell: treat as in use, never delete it
    # Connected, or timed out on a full backlog: a live process listens there.
    return "live"


def _groups_below(host: CgroupHost, subtree: str, *, include_base: bool = False) -> list[str]:
    """Relative paths of the groups under ``subtree`` (counted on one hierarchy)."""
    root = host.roots.get("unified") or host.roots.get("memory") or next(iter(host.roots.values()))
    base = root / subtree
    if not base.is_dir():
        return []
    out = []
    for dirpath, _dirnames, _files in os.walk(base):
        if dirpath != str(base) or include_base:
            out.append(os.path.relpath(dirpath, root))
    return out


def group_pids(host: CgroupHost, rel: str) -> set[int]:
    pids: set[int] = set()
    for root in host.roots.values():
        try:
            pids.update(int(p) for p in (root / rel / "cgroup.procs").read_text().split())
        except (OSError, ValueError):
            pass
    return pids


def _remove_empty_tree(path: Path) -> bool:
    """rmdir ``path`` and its subdirectories bottom-up — only if the whole tree is
    plain empty directories with no mount point in it; else leave it all and say False."""
    try:
        if not stat.S_ISDIR(os.lstat(path).st_mode):
            return False
        top = os.path.realpath(path)
        if any(m == top or m.startswith(top + "/") for m in _mount_points()):
            return False
        dirs = []
        for dirpath, dirnames, filenames in os.walk(path):
            if filenames or any(os.path.islink(os.path.join(dirpath, d)) for d in dirnames):
                return False
            dirs.append(dirpath)
        for dirpath in reversed(dirs):
            os.rmdir(dirpath)
    except FileNotFoundError:
        return True
    except OSError:
        return False
    return True


def _mount_points(mountinfo: str = "/proc/self/mountinfo") -> list[str]:
    points = []
    try:
        for line in Path(mountinfo).read_text().splitlines():
            fields = line.split()
            if len(fields) > 4:
                # Octal escapes (\040 for a space) as the kernel writes them.
                points.append(fields[4].encode().decode("unicode_escape"))
    except OSError:
        pass
    return points


def _remove_leftover(path: Path, kind: str, what: str, result: SweepResult) -> None:
    """Unlink one leftover file, counting it as found, cleaned or failed."""
    result.found[kind] += 1
    try:
        path.unlink()
    except FileNotFoundError:
        pass
    except OSError as exc:
        log.error(f"cannot remove {what}", path=str(path), error=exc.strerror)
        result.failed[kind] += 1
        return
    result.cleaned[kind] += 1
    log.info(f"removed {what} left by a previous run", path=str(path))
