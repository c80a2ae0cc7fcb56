"""Host-wide uid leases: two holders of one range never hand out the same uid,
a dead holder's leases come back, and a hostile lease file is refused typed.
The last test runs two real fork-runtime stacks side by side on one range."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from huselet.errors import InstanceStartFailed
from huselet.runtime import RuntimeConfigError
from huselet.runtime.base import StartFailed
from huselet.runtime.isolation import UidAllocator
from huselet.runtime.uidlease import UID_LEASE_FILE, UidLeases
from huselet.testing.conformance import invoke_json
from huselet.testing.probes import UID_BASE, require_sandbox_host, sandbox_settings
from huselet.testing.stack import running_stack, write_package

BASE = 300_000


def allocator(path: Path, count: int = 10) -> UidAllocator:
    uids = UidAllocator(BASE, count)
    uids.open_leases(path)
    return uids


def test_two_holders_never_hand_out_one_uid(tmp_path: Path) -> None:
    path = tmp_path / "leases"
    first, second = allocator(path), allocator(path)
    assert first.uid_for("a") == BASE
    assert second.uid_for("b") == BASE + 1  # BASE is the first holder's
    assert second.taken_elsewhere == 1
    assert first.uid_for("c") == BASE + 2
    assert first.uid_for("a") == BASE  # a function keeps its uid
    first.close_leases()
    third = allocator(path)
    assert third.uid_for("d") == BASE  # given back on close
    second.close_leases()
    third.close_leases()


def test_a_killed_holders_leases_are_given_back(tmp_path: Path) -> None:
    path = tmp_path / "leases"
    code = (
        "import sys; from pathlib import Path; from huselet.runtime.uidlease import UidLeases\n"
        f"leases = UidLeases(Path({str(path)!r})); assert leases.take({BASE})\n"
        "print('held', flush=True); sys.stdin.read()\n"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        uids = allocator(path)
        assert uids.uid_for("a") == BASE + 1  # another process (daemon) holds BASE
        uids.close_leases()
    finally:
        holder.kill()
        holder.wait()
    uids = allocator(path)
    assert uids.uid_for("a") == BASE  # the kernel dropped the dead holder's lock
    uids.close_leases()


def test_a_range_held_elsewhere_fails_typed_and_says_so(tmp_path: Path) -> None:
    path = tmp_path / "leases"
    other = UidLeases(path)
    assert other.take(BASE) and other.take(BASE + 1)
    uids = allocator(path, count=2)
    with pytest.raises(StartFailed, match="2 held by other daemons"):
        uids.uid_for("a")
    other.close()
    uids.close_leases()


def test_hostile_lease_files_are_refused(tmp_path: Path) -> None:
    target = tmp_path / "target"
    target.write_text("keep")
    link = tmp_path / "link"
    link.symlink_to(target)
    with pytest.raises(RuntimeConfigError, match="cannot open the uid lease file"):
        UidLeases(link)
    assert target.read_text() == "keep"

    fifo = tmp_path / "fifo"
    os.mkfifo(fifo, 0o600)
    with pytest.raises(RuntimeConfigError, match="not a regular file"):
        UidLeases(fifo)  # and no hang on the open

    shared = tmp_path / "shared"
    shared.write_text("")
    shared.chmod(0o666)
    with pytest.raises(RuntimeConfigError, match="writable by others"):
        UidLeases(shared)

    if os.geteuid() == 0:
        foreign = tmp_path / "foreign"
        foreign.write_text("")
        foreign.chmod(0o600)
        os.chown(foreign, 65534, 65534)
        with pytest.raises(RuntimeConfigError, match="owned by uid 65534"):
            UidLeases(foreign)


WHO = """
def handler(event, ctx):
    with open("/proc/self/status") as f:
        return {"uid": int(next(l for l in f if l.startswith("Uid:")).split()[1])}
"""


async def test_two_daemons_on_one_range_run_functions_as_different_uids(short_tmp: Path) -> None:
    require_sandbox_host()
    pkg = write_package(short_tmp, "who", WHO)
    functions = [{"name": "who", "package": str(pkg), "handler": "main:handler", "runtime": "fork"}]
    runtimes = {"fork": sandbox_settings(short_tmp)}  # one uid_base for both
    (short_tmp / "a").mkdir()
    (short_tmp / "b").mkdir()
    async with (
        running_stack(short_tmp / "a", functions, runtimes) as first,
        running_stack(short_tmp / "b", functions, runtimes) as second,
    ):
        with trio.fail_after(60):
            a = await invoke_json(first, "who", {})
            b = await invoke_json(second, "who", {})
    assert a["uid"] != b["uid"], (a, b)


async def test_a_range_held_by_another_daemon_fails_starts_typed(short_tmp: Path) -> None:
    require_sandbox_host()
    uid = UID_BASE + 500  # apart from the uids the session's other tests use
    other = UidLeases(UID_LEASE_FILE)  # another daemon on the host, as far as leases go
    try:
        assert other.take(uid)
        pkg = write_package(short_tmp, "who", WHO)
        functions = [
            {
                "name": "who",
                "package": str(pkg),
                "handler": "main:handler",
                "runtime": "fork",
                "min_instances": 1,  # groups reserved at start need its uid too
            }
        ]
        runtimes = {"fork": sandbox_settings(short_tmp, uid_base=uid, uid_count=1)}
        async with running_stack(short_tmp, functions, runtimes) as stack:
            held = "1 held by other daemons"
            with trio.fail_after(60), pytest.raises(InstanceStartFailed, match=held):
                await invoke_json(stack, "who", {})
    finally:
        other.close()
