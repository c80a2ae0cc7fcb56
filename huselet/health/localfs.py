"""Which file system a path lives on, from ``/proc/self/mountinfo``: local ones may be
``statvfs``-ed on the event loop's thread.

The disk loop measures the state dir's free space every few seconds. On a
network file system ``statvfs`` can block for long, so it ran in a worker
thread — a trip that costs an idle node two event-loop wake-ups of its own
(the worker's answer, then the loop's task) on top of its tick (issue 12: idle
costs ~nothing). On a local disk the call takes microseconds, so the loop asks
once (in a worker thread: reading mountinfo is a file read too) and measures
inline from then on when the file system is one of :data:`LOCAL_FS_TYPES`; any
other type (nfs, cifs, fuse, ceph, 9p, …) or a failed lookup keeps the thread.
"""

from __future__ import annotations

import os
from pathlib import Path

# Block-device and memory file systems: statvfs answers from in-memory counters.
LOCAL_FS_TYPES = frozenset(
    {"ext2", "ext3", "ext4", "xfs", "btrfs", "f2fs", "tmpfs", "ramfs", "overlay", "zfs"}
)


def mounts(mountinfo: str = "/proc/self/mountinfo") -> list[tuple[str, str]]:
    """(mount point, file system type) of every mount, in mountinfo's order; [] if unreadable."""
    found = []
    try:
        lines = Path(mountinfo).read_text().splitlines()
    except OSError:
        return []
    for line in lines:
        fields = line.split()
        # "36 35 98:0 /root /mnt/point opts [optional...] - fstype source superopts"
        if len(fields) <= 4:
            continue
        fstype = ""
        if "-" in fields[5:]:
            at = fields.index("-", 5)
            fstype = fields[at + 1] if len(fields) > at + 1 else ""
        # Octal escapes (\040 for a space) as the kernel writes them.
        found.append((fields[4].encode().decode("unicode_escape"), fstype))
    return found


def fs_type(path: Path, mountinfo: str = "/proc/self/mountinfo") -> str | None:
    """The type of the file system ``path`` is on (the last mount over its longest
    mounted prefix wins, as the kernel resolves it); None if not found."""
    target = os.path.realpath(path)
    best: tuple[int, str] | None = None
    for point, fstype in mounts(mountinfo):
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and (best is None or len(point) >= best[0]):
            best = (len(point), fstype)
    return best[1] if best is not None else None


def on_local_fs(path: Path, mountinfo: str = "/proc/self/mountinfo") -> bool:
    """Is ``path`` on one of :data:`LOCAL_FS_TYPES`? False when it cannot be told."""
    return fs_type(path, mountinfo) in LOCAL_FS_TYPES
