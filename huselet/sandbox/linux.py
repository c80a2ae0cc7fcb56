"""ctypes wrappers for the Linux calls the standard library does not expose.

Only x86_64 syscall numbers are hard-coded (the seccomp filter refuses other
architectures anyway); :func:`check_arch` lets callers refuse clearly.
Every wrapper raises :class:`OSError` with the errno and the operation named.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import platform
import socket
import struct
from typing import Any

_libc = ctypes.CDLL(None, use_errno=True)
# PyDLL keeps the GIL held across the call: required for clone(), which must
# run between PyOS_BeforeFork and PyOS_AfterFork_* exactly like os.fork().
_libc_gil = ctypes.PyDLL(None, use_errno=True)
_syscall_gil = _libc_gil.syscall
_syscall_gil.restype = ctypes.c_long
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long

# namespaces (linux/sched.h)
CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
CLONE_PARENT = 0x00008000
NAMESPACE_FLAGS = (
    CLONE_NEWNS
    | CLONE_NEWCGROUP
    | CLONE_NEWUTS
    | CLONE_NEWIPC
    | CLONE_NEWUSER
    | CLONE_NEWPID
    | CLONE_NEWNET
)

# mount flags (linux/mount.h)
MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_REMOUNT = 0x20
MS_BIND = 0x1000
MS_MOVE = 0x2000
MS_REC = 0x4000
MS_PRIVATE = 0x40000
MNT_DETACH = 0x2

# prctl options (linux/prctl.h)
PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4
PR_CAPBSET_DROP = 24
PR_SET_SECCOMP = 22
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
SECCOMP_MODE_FILTER = 2

SYS_CLONE = 56
SYS_PIVOT_ROOT = 155
SYS_CAPSET = 126
_LINUX_CAPABILITY_VERSION_3 = 0x20080522

SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
IFF_UP = 0x1


class ArchUnsupported(OSError):
    """The sandbox mechanics know only x86_64 syscall numbers."""


def check_arch() -> None:
    if platform.machine() != "x86_64":
        raise ArchUnsupported(f"sandboxing supports x86_64 only, not {platform.machine()}")


def failed(what: str) -> OSError:
    """The OSError of the libc call that just failed (its errno), naming ``what``."""
    err = ctypes.get_errno()
    return OSError(err, f"{what}: {os.strerror(err)}")


def _b(value: str | None) -> bytes | None:
    return None if value is None else os.fsencode(value)


def unshare(flags: int) -> None:
    if _libc.unshare(ctypes.c_int(flags)) != 0:
        raise failed(f"unshare({flags:#x})")


def mount(
    source: str | None, target: str, fstype: str | None, flags: int = 0, data: str | None = None
) -> None:
    if _libc.mount(_b(source), _b(target), _b(fstype), ctypes.c_ulong(flags), _b(data)) != 0:
        raise failed(f"mount {fstype or source or ''} on {target}")


def umount2(target: str, flags: int = 0) -> None:
    if _libc.umount2(_b(target), ctypes.c_int(flags)) != 0:
        raise failed(f"umount {target}")


def pivot_root(new_root: str, put_old: str) -> None:
    if _syscall(ctypes.c_long(SYS_PIVOT_ROOT), _b(new_root), _b(put_old)) != 0:
        raise failed(f"pivot_root({new_root})")


def sethostname(name: str) -> None:
    raw = name.encode()
    if _libc.sethostname(raw, ctypes.c_size_t(len(raw))) != 0:
        raise failed("sethostname")


def prctl(option: int, arg2: int = 0, arg3: int = 0, arg4: int = 0, arg5: int = 0) -> int:
    result: int = _libc.prctl(
        ctypes.c_int(option),
        ctypes.c_ulong(arg2),
        ctypes.c_ulong(arg3),
        ctypes.c_ulong(arg4),
        ctypes.c_ulong(arg5),
    )
    if result < 0:
        raise failed(f"prctl({option})")
    return result


def set_no_new_privs() -> None:
    prctl(PR_SET_NO_NEW_PRIVS, 1)


def set_pdeathsig(sig: int) -> None:
    prctl(PR_SET_PDEATHSIG, sig)


def set_dumpable(on: bool) -> None:
    prctl(PR_SET_DUMPABLE, 1 if on else 0)


def drop_capabilities() -> None:
    """Empty the ambient, permitted, effective and inheritable capability sets.

    The bounding set is left alone on purpose: it only matters at execve, and
    with ``no_new_privs`` set an execve can gain nothing anyway (file
    capabilities and set-uid bits are ignored) — while dropping it costs one
    prctl per capability on every instance start.
    """
    try:
        prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL)
    except OSError:
        pass  # kernels before 4.3 have no ambient set
    if _syscall(ctypes.c_long(SYS_CAPSET), _CAP_HEADER, _CAP_ZERO) != 0:
        raise failed("capset")


_CAP_HEADER = ctypes.create_string_buffer(struct.pack("II", _LINUX_CAPABILITY_VERSION_3, 0), 8)
# Two __user_cap_data_struct {effective, permitted, inheritable}, all zero.
_CAP_ZERO = ctypes.create_string_buffer(bytes(24), 24)


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


class SeccompProgram:
    """A BPF program ready to load (built once in a zygote, loaded by each instance)."""

    def __init__(self, program: bytes) -> None:
        self._buf = ctypes.create_string_buffer(program, len(program))
        self._prog = _SockFprog(len(program) // 8, ctypes.addressof(self._buf))

        # prctl's arguments, converted once: an instance that loads the filter
        # then makes one call and builds no ctypes objects (see PreparedCall).
        self.load = PreparedCall(
            "seccomp filter",
            _libc.prctl,
            ctypes.c_int(PR_SET_SECCOMP),
            ctypes.c_ulong(SECCOMP_MODE_FILTER),
            ctypes.byref(self._prog),
            0,
            0,
        )

    def install(self) -> None:
        """Load the filter for this thread (requires no_new_privs or CAP_SYS_ADMIN)."""
        self.load()


class PreparedCall:
    """A libc call whose arguments are converted once, in the zygote.

    A forked instance that makes it then builds no ctypes objects and runs no
    conversion code: each object it touches is a page it copies.
    A negative result raises :class:`OSError` naming ``what``. A caller that
    runs many of them in a row may call ``fn(*args)`` itself and check the
    result (:func:`failed` makes the error): one Python frame fewer per call.
    """

    def __init__(self, what: str, fn: Any, *args: Any) -> None:
        self.what = what
        self.fn = fn
        self.args = args

    def __call__(self) -> int:
        result: int = self.fn(*self.args)
        if result < 0:
            raise failed(self.what)
        return result


def prepared_mount(
    source: str | None, target: str, fstype: str | None, flags: int = 0, data: str | None = None
) -> PreparedCall:
    args = (_b(source), _b(target), _b(fstype), ctypes.c_ulong(flags), _b(data))
    return PreparedCall(f"mount {fstype or source or ''} on {target}", _libc.mount, *args)


def prepared_prctl(option: int, arg2: int = 0) -> PreparedCall:
    zero = ctypes.c_ulong(0)
    args = (ctypes.c_int(option), ctypes.c_ulong(arg2), zero, zero, zero)
    return PreparedCall(f"prctl({option})", _libc.prctl, *args)


def prepared_capset_empty() -> PreparedCall:
    """capset(2) emptying every set (see :func:`drop_capabilities`)."""
    return PreparedCall("capset", _syscall, ctypes.c_long(SYS_CAPSET), _CAP_HEADER, _CAP_ZERO)


def install_seccomp(program: bytes) -> None:
    SeccompProgram(program).install()


class Cloner:
    """fork() with fixed clone flags: call it to get 0 in the child, the child's pid in the parent.

    Runs Python's own fork bookkeeping around the raw syscall (the same calls
    ``os.fork()`` makes), so at-fork hooks — random reseeding, lock resets —
    run in the child. The caller must be single-threaded, as for any fork.

    Everything a call needs is built once, here: a zygote that forks many
    instances then writes as few pages as possible between two clones (every
    page it writes after a clone stays behind, a private copy, in the child
    before it), and the child allocates nothing on its way out of the call.
    """

    def __init__(self, flags: int) -> None:
        self.flags = flags
        api = ctypes.pythonapi
        self._before = api.PyOS_BeforeFork
        self._child = api.PyOS_AfterFork_Child
        self._parent = api.PyOS_AfterFork_Parent
        self._args = (
            ctypes.c_long(SYS_CLONE),
            ctypes.c_ulong(flags | 17),  # 17: SIGCHLD to the parent on exit
            ctypes.c_void_p(0),
            ctypes.c_void_p(0),
            ctypes.c_void_p(0),
            ctypes.c_ulong(0),
        )

    def parts(self) -> tuple[Any, ...]:
        """What :meth:`__call__` calls, for a loop that inlines it (huselet.sandbox.forkloop).

        ``(before, syscall, args, after_child, after_parent)``: call
        ``before()``, then ``syscall(*args)``, then ``after_child()`` where it
        returned 0, else ``after_parent()`` (a negative result: read
        ``ctypes.get_errno()`` before that call).
        """
        return (self._before, _syscall_gil, self._args, self._child, self._parent)

    def __call__(self) -> int:
        self._before()
        pid: int = _syscall_gil(*self._args)
        if pid == 0:
            self._child()
            return 0
        err = ctypes.get_errno()
        self._parent()
        if pid < 0:
            raise OSError(err, f"clone({self.flags:#x}): {os.strerror(err)}")
        return pid


def clone_process(flags: int) -> int:
    """One fork with clone ``flags`` (see :class:`Cloner`, for many forks with the same flags)."""
    return Cloner(flags)()


def loopback_up() -> None:
    """Bring ``lo`` up in the current network namespace (it starts down)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        ifreq = struct.pack("16sH14s", b"lo", 0, b"")
        flags = struct.unpack("16sH14s", fcntl.ioctl(s.fileno(), SIOCGIFFLAGS, ifreq))[1]
        fcntl.ioctl(s.fileno(), SIOCSIFFLAGS, struct.pack("16sH14s", b"lo", flags | IFF_UP, b""))
