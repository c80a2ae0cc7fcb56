"""The oci runtime with real runc containers: escape attempts, OOM through the
cgroup runc creates, and that containers, bundles and cgroups are gone after."""

from __future__ import annotations

import json
import os
import shutil
import socket
from pathlib import Path

import pytest
import trio
from sandbox_support import (
    ESCAPE_HANDLER,
    UID_BASE,
    describe_pids,
    processes_of_uids,
    require_sandbox_host,
    sandbox_settings,
)
from support import running_stack, write_package

from huselet.errors import InstanceLost
from huselet.runtime.cgroups import hierarchy_roots

pytestmark = pytest.mark.usefixtures("runc_host")


@pytest.fixture
def runc_host() -> None:
    require_sandbox_host()
    if shutil.which("runc") is None:
        pytest.skip("runc is not installed")


def fn(name: str, pkg: Path, **extra: object) -> dict[str, object]:
    return {
        "name": name,
        "package": str(pkg),
        "handler": "main:handler",
        "runtime": "oci",
        **extra,
    }


async def invoke(stack: object, name: str, event: object) -> object:
    result = await stack.scheduler.invoke(name, json.dumps(event).encode(), "json")  # type: ignore[attr-defined]
    return json.loads(result.body)


async def test_escape_attempts_fail_and_nothing_is_left(short_tmp: Path) -> None:
    pkg = write_package(short_tmp, "f", ESCAPE_HANDLER)
    other = write_package(short_tmp, "g", "def handler(e, c):\n    return 'secret'\n")
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    try:
        async with running_stack(
            short_tmp, [fn("f", pkg), fn("g", other)], {"oci": sandbox_settings(short_tmp)}
        ) as stack:
            event = {
                "other_code": str(other / "main.py"),
                "other_link": str(stack.links.socket_path("g")),
                "own_link": str(stack.links.socket_path("f")),
                "port": listener.getsockname()[1],
                "daemon_pid": os.getpid(),
            }
            with trio.fail_after(30):
                got = await invoke(stack, "f", event)
    finally:
        listener.close()
    assert UID_BASE <= got["uid"] < UID_BASE + 2 and got["cap_eff"] == "0000000000000000"
    assert got["no_new_privs"] == "1" and got["seccomp"] == "2"
    assert got["write_usr"] == "EROFS" and got["write_package"] == "EROFS"
    assert got["write_tmp"] == "ok"
    assert got["read_other_code"] == "ENOENT"
    assert got["other_link"] == "ENOENT" and got["own_link"] == "ENOENT"
    assert got["connect_host"] == "ECONNREFUSED"
    assert got["interfaces"] == ["lo"]
    for call in ("ptrace", "mount", "unshare", "setns", "bpf"):
        assert got[call] == "EPERM", (call, got[call])
    assert got["kill_daemon"] in ("ESRCH", "EPERM")
    assert got["visible_pids"] == [1]
    assert not got["environ_token"]
    name = f"huselet-test-{short_tmp.name}"
    assert [r for r in hierarchy_roots() if (r / name).exists()] == []
    assert not (short_tmp / "run" / "oci").exists()
    left = processes_of_uids(UID_BASE, UID_BASE + 100)
    assert left == [], describe_pids(left)


HOG = """
def handler(event, ctx):
    blocks = []
    for _ in range(64):
        blocks.append(b"x" * (8 << 20))
    return len(blocks)
"""


async def test_memory_limit_reports_out_of_memory(short_tmp: Path) -> None:
    pkg = write_package(short_tmp, "hog", HOG)
    async with running_stack(
        short_tmp, [fn("hog", pkg, memory_mb=64)], {"oci": sandbox_settings(short_tmp)}
    ) as stack:
        with trio.fail_after(30), pytest.raises(InstanceLost) as lost:
            await invoke(stack, "hog", {})
    assert "out of memory" in str(lost.value)
