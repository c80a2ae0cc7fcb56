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

import os
import signal
import stat
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from huselet.admin.errors import AdminSocketInUse
from huselet.config import Config
from huselet.health.counters import HealthCounter, Leftover
from huselet.health.leftovers import (
    ancestors,
    command_line,
    group_pids,
    groups_below,
    process_alive,
    remove_empty_tree,
    socket_state,
    under_roots,
)
from huselet.health.supervisor import HealthState, LoopReport
from huselet.log import get_logger
from huselet.runtime.cgrouppool import CgroupPool
from huselet.runtime.cgroups import Cgroup, CgroupHost
from huselet.runtime.identity import sandbox_subtree

log = get_logger("health.recovery")

KINDS = tuple(Leftover)
_WORDS = {
    Leftover.PROCESSES: ("process", "processes"),
    Leftover.CGROUPS: ("cgroup", "cgroups"),
    Leftover.SOCKETS: ("socket", "sockets"),
    Leftover.TEMP_FILES: ("temp file", "temp files"),
    Leftover.STAGING_DIRS: ("staging dir", "staging dirs"),
}
# Runtimes that keep a CgroupPool under <cgroup_parent>/<name> (oci's groups are runc's).
CGROUP_POOL_RUNTIMES = ("fork", "bwrap")
TEMP_SUFFIXES = (".tmp", ".part")
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
        out: dict[str, int] = {kind: self.found[kind] for kind in KINDS if self.found[kind]}
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
        if await socket_state(self.admin_socket) == "live":
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
        if link is not None and under_roots(os.fsdecode(link), [self.run_dir / "fn"]):
            return "HUSELET_LINK"
        image = env.get(b"HUSELET_IMAGE")
        if image is not None and under_roots(os.fsdecode(image), [self.state_dir]):
            return "HUSELET_IMAGE"
        return None

    def find_processes(self) -> dict[int, str]:
        """Processes of a previous run of this node: ``{pid: marker}``."""
        spared = ancestors(os.getpid())  # ourselves and whoever started us
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
                result.found[Leftover.PROCESSES] += 1
                try:
                    pidfd = os.pidfd_open(pid)
                except ProcessLookupError:
                    result.cleaned[Leftover.PROCESSES] += 1  # gone between the scan and now
                    continue
                # The pid cannot be reused while we hold its pidfd: check it again.
                if self._marker(pid) is None:
                    os.close(pidfd)
                    result.found[Leftover.PROCESSES] -= 1
                    continue
                log.warning(
                    "killing a process left by a previous run",
                    pid=pid,
                    marker=marker,
                    command=command_line(pid),
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
                    result.failed[Leftover.PROCESSES] += 1
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
            groups = groups_below(host, subtree)
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
                    commands=[command_line(pid) for pid in sorted(members)][:10],
                )
            result.found[Leftover.PROCESSES] += len(members)
            if name == "oci":
                # runc made these groups and removes them (``runc delete`` at the
                # runtime's start); the containers in them must not wait for that.
                for group in groups:
                    await Cgroup(host, group).kill_all()
            else:
                result.found[Leftover.CGROUPS] += len(groups)
                pool = CgroupPool(host, subtree, target_free=0, pids_max=None, cpu_cores=None)
                await pool.remove_subtree()
                remaining = min(len(groups), len(groups_below(host, subtree, include_base=True)))
                result.failed[Leftover.CGROUPS] += remaining
                result.cleaned[Leftover.CGROUPS] += len(groups) - remaining
                log.warning(
                    "removed cgroups left by a previous run",
                    subtree=subtree,
                    groups=len(groups),
                    remaining=remaining,
                )
            alive = {pid for pid in members if process_alive(pid)}
            result.failed[Leftover.PROCESSES] += len(alive)
            result.cleaned[Leftover.PROCESSES] += len(members) - len(alive)

    # sockets ---------------------------------------------------------------------

    async def _clear_sockets(self, result: SweepResult) -> None:
        candidates = [self.admin_socket]
        fn_dir = self.run_dir / "fn"
        try:
            candidates += sorted(fn_dir / name for name in os.listdir(fn_dir))
        except OSError:
            pass
        for path in candidates:
            state = await socket_state(path)
            if state in ("absent", "not a socket"):
                continue
            if state == "live":
                # Someone listens on a socket of ours (not our admin socket: checked).
                log.warning("a socket in the run directory is in use; leaving it", path=str(path))
                continue
            _remove_leftover(path, Leftover.SOCKETS, "a socket", result)

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
                _remove_leftover(path, Leftover.TEMP_FILES, "a temp file", result)

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
                result.found[Leftover.STAGING_DIRS] += 1
                if remove_empty_tree(path):
                    result.cleaned[Leftover.STAGING_DIRS] += 1
                    log.info("removed a staging dir left by a previous run", path=str(path))
                else:
                    result.failed[Leftover.STAGING_DIRS] += 1
                    log.error("a leftover staging dir is not empty; leaving it", path=str(path))


# --- helpers -----------------------------------------------------------------------------


async def _wait_exited(pidfds: list[int], result: SweepResult) -> None:
    """Wait (bounded) until every signalled process exited; count the outcome."""
    exited = 0
    with trio.move_on_after(KILL_WAIT_S):
        for fd in pidfds:
            await trio.lowlevel.wait_readable(fd)
            exited += 1
    result.cleaned[Leftover.PROCESSES] += exited
    if exited < len(pidfds):
        log.error("leftover processes did not exit after SIGKILL", count=len(pidfds) - exited)
        result.failed[Leftover.PROCESSES] += len(pidfds) - exited


def _remove_leftover(path: Path, kind: Leftover, what: str, result: SweepResult) -> None:
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
