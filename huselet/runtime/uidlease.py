"""Host-wide leases on function uids, so daemons on one host never share one.

Each runtime hands every function its own unprivileged uid from a configured
range (:class:`huselet.runtime.isolation.UidAllocator`). Two daemons on one
host with the same range (the default one, say) would otherwise both give
their first function ``uid_base``: two tenants' functions would share a uid —
its ``RLIMIT_NPROC`` count, its files, its right to signal the other's
processes where namespaces do not separate them (the ``process`` runtime).

A lease is a write lock on one byte of a shared lock file, at the offset of the
uid: an open-file-description lock (``F_OFD_SETLK``), so the kernel drops it
when the daemon's descriptor closes — on a clean stop and on ``SIGKILL``
alike; nothing is left to clean up, and no file grows (locks beyond the end of
a file need no data). Two allocators in one process conflict too (each opens
the file itself), which keeps runtimes apart in tests that run several.

The file is opened without following symlinks, and refused unless it is a
regular file owned by this user and writable by no one else: anyone who could
write or swap it could steer which uids this daemon takes.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
import struct
from pathlib import Path

from huselet.runtime.base import RuntimeConfigError

# Host-wide, not per run dir: every daemon on the host must see the same file.
# /run/huselet is the unit's RuntimeDirectory (writable under ProtectSystem=strict).
UID_LEASE_FILE = Path("/run/huselet/uid-leases")

# struct flock: l_type, l_whence, l_start, l_len, l_pid (0 for OFD locks), padded.
_FLOCK = "@hhqqi"
_FLOCK_SIZE = (struct.calcsize(_FLOCK) + 7) // 8 * 8


class UidLeases:
    """This process's leases in one lock file (open until :meth:`close`)."""

    def __init__(self, path: Path = UID_LEASE_FILE) -> None:
        self.path = path
        self._fd = _open_lock_file(path)
        self.held: set[int] = set()

    def take(self, uid: int) -> bool:
        """Lease ``uid``; False if another holder (daemon, runtime) has it."""
        if uid in self.held:
            return True
        try:
            fcntl.fcntl(self._fd, fcntl.F_OFD_SETLK, _flock(fcntl.F_WRLCK, uid))
        except OSError as exc:
            if exc.errno in (errno.EAGAIN, errno.EACCES):
                return False
            raise
        self.held.add(uid)
        return True

    def close(self) -> None:
        """Give every lease back (closing the descriptor drops its locks)."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
            self.held.clear()


def _flock(kind: int, uid: int) -> bytes:
    packed = struct.pack(_FLOCK, kind, os.SEEK_SET, uid, 1, 0)
    return packed.ljust(_FLOCK_SIZE, b"\0")


def _open_lock_file(path: Path) -> int:
    """The lock file's descriptor, made if missing; a hostile file is refused typed."""
    try:
        path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        # O_NONBLOCK: a FIFO planted at the path must not block the open.
        flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
        fd = os.open(path, flags, 0o600)
    except OSError as exc:
        raise RuntimeConfigError(
            f"cannot open the uid lease file {path}: {exc.strerror} (daemons on one host "
            "lease function uids there so that no two share one; it must be writable by root)"
        ) from None
    info = os.fstat(fd)
    problem = None
    if not stat.S_ISREG(info.st_mode):
        problem = "is not a regular file"
    elif info.st_uid != os.geteuid():
        problem = f"is owned by uid {info.st_uid}, not this daemon's ({os.geteuid()})"
    elif info.st_mode & 0o022:
        problem = f"is writable by others (mode {stat.S_IMODE(info.st_mode):o})"
    if problem:
        os.close(fd)
        raise RuntimeConfigError(f"refusing the uid lease file {path}: it {problem}")
    return fd
