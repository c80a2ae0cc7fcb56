"""Probes for what a previous run of the node left: processes, sockets, cgroups, trees.

Read-only facts from ``/proc`` (a process's parent chain, command line, liveness),
whether a Unix socket still has a listener, which cgroups sit below a subtree
and who is in them, and the one removal that needs care: a staging tree is
removed only when it is nothing but empty directories with no mount point in
it. :class:`~huselet.health.recovery.RecoverySweep` decides what to kill or
remove from these.
"""

from __future__ import annotations

import errno
import os
import socket
import stat
from collections.abc import Iterable
from pathlib import Path

import trio

from huselet.health.localfs import mounts
from huselet.runtime.cgroups import CgroupHost

PROBE_TIMEOUT_S = 0.5


def under_roots(value: str, roots: Iterable[Path]) -> bool:
    path = os.path.normpath(value)
    for root in roots:
        for form in {os.path.normpath(root), os.path.realpath(root)}:
            if path.startswith(form.rstrip("/") + "/"):
                return True
    return False


def ancestors(pid: int) -> set[int]:
    out = {pid}
    while pid > 1:
        try:
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            break
        out.add(pid)
    return out


def command_line(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return "?"
    return raw.replace(b"\0", b" ").decode("utf-8", "replace").strip()[:200]


def process_alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


async def socket_state(path: Path) -> str:
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


def groups_below(host: CgroupHost, subtree: str, *, include_base: bool = False) -> list[str]:
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


def remove_empty_tree(path: Path) -> bool:
    """rmdir ``path`` and its subdirectories bottom-up — only if the whole tree is
    plain empty directories with no mount point in it; else leave it all and say False."""
    try:
        if not stat.S_ISDIR(os.lstat(path).st_mode):
            return False
        top = os.path.realpath(path)
        if any(m == top or m.startswith(top + "/") for m in mount_points()):
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


def mount_points(mountinfo: str = "/proc/self/mountinfo") -> list[str]:
    return [point for point, _ in mounts(mountinfo)]
