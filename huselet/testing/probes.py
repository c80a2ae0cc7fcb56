"""Probes for sandboxing runtimes: can this host sandbox, unique cgroup parents,
a handler that tries to escape and reports what happened, and leftover checks.

Used by the runtime conformance suite (:mod:`huselet.testing.conformance`) and
by the per-runtime tests of what only one runtime does."""

from __future__ import annotations

import functools
import os
from pathlib import Path

import pytest

from huselet.runtime.cgroups import CgroupHost
from huselet.runtime.isolation import IsolationSettings, probe_host

# Helper uids of this test session. Sessions running side by side on one host
# (CI shards, parallel worktrees) each get their own block, so one session's
# leftover checks and hidepid views never see another's sandboxes.
UID_BASE = int(os.environ.get("HUSELET_TEST_UID_BASE", "0")) or 231_000 + 1000 * (os.getpid() % 256)


@functools.cache
def host_problem() -> str | None:
    """Why this host cannot run the fully isolated runtimes, or None."""
    if os.geteuid() != 0:
        return "needs root (namespaces, uid switch, cgroups)"
    host = probe_host(IsolationSettings(uid_base=UID_BASE))
    if host.userns is not None:
        return host.userns
    if host.cgroups is None or host.cgroups.missing():
        return "needs the memory, pids and cpu cgroup controllers"
    return None


def require_sandbox_host() -> None:
    problem = host_problem()
    if problem:
        pytest.skip(f"host cannot sandbox: {problem}")


def sandbox_settings(tmp: Path, **extra: object) -> dict[str, object]:
    """A runtime table with a cgroup parent unique to this test (removed after)."""
    return {"cgroup_parent": f"huselet-test-{tmp.name}", "uid_base": UID_BASE, **extra}


def cgroup_leftovers(tmp: Path) -> list[str]:
    host = CgroupHost.detect()
    if host is None:
        return []
    name = f"huselet-test-{tmp.name}"
    return [str(root / name) for root in host.roots.values() if (root / name).exists()]


def describe_pids(pids: list[int]) -> list[str]:
    out = []
    for pid in pids:
        try:
            status = Path(f"/proc/{pid}/status").read_text().splitlines()
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        keep = [line for line in status if line.split(":")[0] in ("Name", "State", "PPid", "NSpid")]
        out.append(f"{pid}: {cmd} {keep}")
    return out


def processes_of_uids(lo: int, hi: int) -> list[int]:
    """Live processes whose uid is in ``[lo, hi)``.

    Zombies are dead already: ours are checked apart (the conformance suite's
    zombie check), and one re-parented to init waits for init, which may reap
    lazily (in some containers, seconds later) — not a leftover of a runtime.
    """
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            status = Path(f"/proc/{entry}/status").read_text()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        if fields.get("State", "").strip().startswith("Z"):
            continue
        uid = fields.get("Uid", "").split()
        if uid and lo <= int(uid[0]) < hi:
            found.append(int(entry))
    return found


# A handler that tries to get out and reports, per attempt, what happened.
ESCAPE_HANDLER = r"""
import ctypes, errno, os, signal, socket, tempfile

libc = ctypes.CDLL(None, use_errno=True)


def attempt(fn):
    try:
        result = fn()
    except OSError as exc:
        return errno.errorcode.get(exc.errno, str(exc.errno))
    except Exception as exc:
        return type(exc).__name__
    return "ok" if result is None else result


def syscall(nr, *args):
    def call():
        if libc.syscall(nr, *args) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))
    return call


def write(path):
    def go():
        with open(path, "w") as f:
            f.write("x")
    return go


def write_and_remove(path):
    def go():
        write(path)()
        os.unlink(path)  # a sandbox whose /tmp is the host's must not litter it
    return go


def mount_tmpfs():
    # Over a fresh directory of its own, never a path others use: a runtime
    # that fails to confine (the probe then runs as root on the host) must
    # not leave the host's /tmp covered. Unmounted again at once.
    target = tempfile.mkdtemp(prefix="huselet-mount-probe-").encode()
    try:
        syscall(165, b"none", target, b"tmpfs", 0, 0)()
        libc.syscall(166, target, 2)  # umount2(MNT_DETACH)
    finally:
        os.rmdir(target)


def connect(port):
    def go():
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            pass
    return go


def handler(event, ctx):
    here = os.path.dirname(os.path.abspath(__file__))
    status = open("/proc/self/status").read()
    return {
        "uid": os.getuid(),
        "pid": os.getpid(),
        "cap_eff": status.split("CapEff:")[1].split()[0],
        "no_new_privs": status.split("NoNewPrivs:")[1].split()[0],
        "seccomp": status.split("Seccomp:")[1].split()[0],
        "write_usr": attempt(write("/usr/huselet-escape")),
        "write_package": attempt(write(os.path.join(here, "escape.txt"))),
        "write_tmp": attempt(write_and_remove("/tmp/fine.txt")),
        "read_other_code": attempt(lambda: open(event["other_code"]).read() and None),
        "other_link": attempt(lambda: os.stat(event["other_link"]) and None),
        "own_link": attempt(lambda: os.stat(event["own_link"]) and None),
        "connect_host": attempt(connect(event["port"])),
        "interfaces": [name for _, name in socket.if_nameindex()],
        "ptrace": attempt(syscall(101, 0, 0, 0, 0)),  # PTRACE_TRACEME
        "mount": attempt(mount_tmpfs),
        "unshare": attempt(syscall(272, 0x10000000)),  # CLONE_NEWUSER
        "setns": attempt(syscall(308, 0, 0)),
        "bpf": attempt(syscall(321, 0, 0, 0)),
        "kill_daemon": attempt(lambda: os.kill(event["daemon_pid"], signal.SIGTERM)),
        "visible_pids": sorted(int(p) for p in os.listdir("/proc") if p.isdigit()),
        "environ_token": any(k == "HUSELET_TOKEN" for k in os.environ),
    }
"""
