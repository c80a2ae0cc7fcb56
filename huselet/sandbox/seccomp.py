"""A seccomp deny-list filter as a classic BPF program, built without libseccomp.

Why a deny list: function code is arbitrary Python (plus native extensions),
so an allow list would break libraries in ways no operator can predict; what
must never be reachable from a sandbox is a short, well-known list — kernel
module and kexec loading, mount and namespace manipulation, ptrace and
cross-process memory access, keyrings, bpf, perf, userfaultfd, io_uring (a
large kernel attack surface), clock and host-identity changes. Those return
``EPERM``. ``clone`` is allowed unless it asks for new namespaces; ``clone3``
answers ``ENOSYS`` because its flags live in memory BPF cannot inspect, and
glibc then falls back to ``clone``. Any architecture other than x86_64
(including the x32 ABI on x86_64) kills the process: our syscall numbers
would be meaningless there.

The program bytes are what both ``prctl(PR_SET_SECCOMP)`` and
``bwrap --seccomp FD`` take.
"""

from __future__ import annotations

import errno
import struct
from collections.abc import Iterable

AUDIT_ARCH_X86_64 = 0xC000003E
X32_SYSCALL_BIT = 0x40000000

SECCOMP_RET_KILL_PROCESS = 0x80000000
SECCOMP_RET_ERRNO = 0x00050000
SECCOMP_RET_ALLOW = 0x7FFF0000

# BPF opcodes
_LD_W_ABS = 0x20
_JEQ_K = 0x15
_JGE_K = 0x35
_JSET_K = 0x45
_RET_K = 0x06

# struct seccomp_data offsets
_OFF_NR = 0
_OFF_ARCH = 4
_OFF_ARG0_LO = 16  # little-endian: the low 32 bits of args[0]

SYS_CLONE = 56
SYS_CLONE3 = 435
SYS_MOUNT = 165
SYS_UMOUNT2 = 166
SYS_UNSHARE = 272

# x86_64 numbers (arch/x86/entry/syscalls/syscall_64.tbl).
DENIED: dict[str, int] = {
    "ptrace": 101,
    "syslog": 103,
    "uselib": 134,
    "vhangup": 153,
    "pivot_root": 155,
    "_sysctl": 156,
    "adjtimex": 159,
    "chroot": 161,
    "acct": 163,
    "settimeofday": 164,
    "mount": SYS_MOUNT,
    "umount2": SYS_UMOUNT2,
    "swapon": 167,
    "swapoff": 168,
    "reboot": 169,
    "sethostname": 170,
    "setdomainname": 171,
    "iopl": 172,
    "ioperm": 173,
    "create_module": 174,
    "init_module": 175,
    "delete_module": 176,
    "get_kernel_syms": 177,
    "query_module": 178,
    "quotactl": 179,
    "nfsservctl": 180,
    "lookup_dcookie": 212,
    "clock_settime": 227,
    "kexec_load": 246,
    "add_key": 248,
    "request_key": 249,
    "keyctl": 250,
    "unshare": SYS_UNSHARE,
    "move_pages": 279,
    "perf_event_open": 298,
    "fanotify_init": 300,
    "name_to_handle_at": 303,
    "open_by_handle_at": 304,
    "clock_adjtime": 305,
    "setns": 308,
    "process_vm_readv": 310,
    "process_vm_writev": 311,
    "kcmp": 312,
    "finit_module": 313,
    "kexec_file_load": 320,
    "bpf": 321,
    "userfaultfd": 323,
    "io_uring_setup": 425,
    "io_uring_enter": 426,
    "io_uring_register": 427,
    "open_tree": 428,
    "move_mount": 429,
    "fsopen": 430,
    "fsconfig": 431,
    "fsmount": 432,
    "fspick": 433,
    "pidfd_getfd": 438,
    "mount_setattr": 442,
    "quotactl_fd": 443,
}

# CLONE_NEW{NS,CGROUP,UTS,IPC,USER,PID,NET}
CLONE_NAMESPACE_FLAGS = 0x7E020000


def _insn(code: int, jt: int, jf: int, k: int) -> bytes:
    return struct.pack("<HBBI", code, jt, jf, k & 0xFFFFFFFF)


def build_filter(*, allow: Iterable[str] = (), allow_clone_namespaces: bool = False) -> bytes:
    """The deny-list filter; ``allow`` names entries of :data:`DENIED` to let through.

    A zygote needs ``mount`` and namespace flags on ``clone`` to make its
    instances (in their own user namespace, so without host privilege); the
    instance filter, stacked on top after that, takes both away again.
    """
    allowed = set(allow)
    unknown = allowed - DENIED.keys()
    if unknown:
        raise ValueError(f"not in the deny list: {sorted(unknown)}")
    denied = sorted(nr for name, nr in DENIED.items() if name not in allowed)

    # Layout (jump offsets are relative to the next instruction):
    #   0 ld arch; 1 jeq x86_64 ? 3 : 2; 2 ret KILL
    #   3 ld nr;   4 jge X32 ? EPERM
    #   5.. one jeq per denied nr -> EPERM
    #   clone3 -> ENOSYS; clone -> CLONE_CHECK (unless allowed)
    #   ret ALLOW; EPERM: ret errno; ENOSYS: ret errno;
    #   CLONE_CHECK: ld arg0; jset -> EPERM; ret ALLOW
    body: list[tuple[int, int, str | None, int]] = []  # (code, k, jump target label, 0)
    body.append((_JGE_K, X32_SYSCALL_BIT, "eperm", 0))
    for nr in denied:
        body.append((_JEQ_K, nr, "eperm", 0))
    body.append((_JEQ_K, SYS_CLONE3, "enosys", 0))
    if not allow_clone_namespaces:
        body.append((_JEQ_K, SYS_CLONE, "clone_check", 0))
    head = [
        _insn(_LD_W_ABS, 0, 0, _OFF_ARCH),
        _insn(_JEQ_K, 1, 0, AUDIT_ARCH_X86_64),
        _insn(_RET_K, 0, 0, SECCOMP_RET_KILL_PROCESS),
        _insn(_LD_W_ABS, 0, 0, _OFF_NR),
    ]
    start = len(head)
    allow_at = start + len(body)
    labels = {"eperm": allow_at + 1, "enosys": allow_at + 2, "clone_check": allow_at + 3}
    prog = list(head)
    for i, (code, k, target, _) in enumerate(body):
        pos = start + i
        assert target is not None
        jt = labels[target] - (pos + 1)
        if jt > 255:
            raise ValueError("seccomp filter too long for 8-bit jumps")
        prog.append(_insn(code, jt, 0, k))
    prog.append(_insn(_RET_K, 0, 0, SECCOMP_RET_ALLOW))
    prog.append(_insn(_RET_K, 0, 0, SECCOMP_RET_ERRNO | errno.EPERM))
    prog.append(_insn(_RET_K, 0, 0, SECCOMP_RET_ERRNO | errno.ENOSYS))
    # clone_check: refuse clone() that would create namespaces.
    prog.append(_insn(_LD_W_ABS, 0, 0, _OFF_ARG0_LO))
    prog.append(_insn(_JSET_K, 0, 1, CLONE_NAMESPACE_FLAGS))
    prog.append(_insn(_RET_K, 0, 0, SECCOMP_RET_ERRNO | errno.EPERM))
    prog.append(_insn(_RET_K, 0, 0, SECCOMP_RET_ALLOW))
    return b"".join(prog)


def instance_filter() -> bytes:
    """What every function instance runs under."""
    return build_filter()


def zygote_filter() -> bytes:
    """What a zygote runs under: the instance filter minus what it needs to make instances."""
    return build_filter(allow=("mount",), allow_clone_namespaces=True)
