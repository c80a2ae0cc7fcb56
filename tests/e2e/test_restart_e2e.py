"""End to end: SIGKILL the real daemon with warm instances on every runtime this
host has (process, fork with its zygote, bwrap), then restart it on the same
config. Nothing may outlive the daemon — no process, no populated cgroup —
and the restarted daemon serves and says in ``ctl health`` what the previous
run left and what it cleaned."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from daemon_harness import Daemon, pid_alive, wait_until, write_config
from support import write_package

from huselet.runtime.cgroups import CgroupHost
from huselet.testing.probes import UID_BASE, cgroup_leftovers, describe_pids, host_problem

pytestmark = pytest.mark.e2e

HANDLER = """
import os, time
def handler(event, context):
    time.sleep(event.get("sleep", 0))
    return {"pid": os.getpid(), "function": context.function_name}
"""


def descendants(pid: int) -> set[int]:
    """Every live process below ``pid`` (by parent links, in the host PID namespace)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    out: set[int] = set()
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in out:
                out.add(child)
                todo.append(child)
    return out


def populated_cgroups(parent: str) -> list[str]:
    """Groups under ``parent`` (any hierarchy) that still hold a process."""
    host = CgroupHost.detect()
    if host is None:
        return []
    found = []
    for root in host.roots.values():
        for dirpath, _dirs, _files in os.walk(root / parent):
            try:
                if (Path(dirpath) / "cgroup.procs").read_text().split():
                    found.append(dirpath)
            except OSError:
                pass
    return found


def busy_requests(daemon: Daemon, names: list[str]) -> None:
    """Start a long request on each function and wait until every instance is busy."""

    def call(name: str) -> None:
        try:
            daemon.invoke(name, {"sleep": 30})
        except httpx.HTTPError:
            pass  # the daemon is killed under it

    for name in names:
        threading.Thread(target=call, args=(name,), daemon=True).start()

    def all_busy() -> bool:
        out = daemon.ctl("instances", "--json")
        busy = [i for i in json.loads(out.stdout) if i["state"] == "busy"]
        return len(busy) == len(names)

    assert wait_until(all_busy, 30)


def recovery_report(daemon: Daemon) -> dict[str, Any]:
    """The "recovery" loop of ``ctl health`` (published once the health loops run)."""

    def get() -> dict[str, Any]:
        out = daemon.ctl("health", "--json")
        assert out.returncode == 0, out.stderr
        loops = {loop["loop"]: loop for loop in json.loads(out.stdout)["loops"]}
        return loops["recovery"]  # type: ignore[no-any-return]

    assert wait_until(lambda: get()["detail"], 30)
    return get()


@pytest.fixture
def root(short_tmp: Path) -> Path:
    return short_tmp  # short: Unix socket paths must stay under 108 bytes


def config_text(root: Path, sandbox: bool, bwrap: bool) -> str:
    pkg = write_package(root / "pkgs", "fn", HANDLER)
    # The default: package directories are packed, so every runtime imports from an image.
    tables = ""
    names = ["proc", "forked"]
    if sandbox:
        parent = f"huselet-test-{root.name}"
        common = f'cgroup_parent = "{parent}"\nuid_base = {UID_BASE}\ncgroup_pool = 4\n'
        tables += f"[runtimes.fork]\n{common}\n"
        if bwrap:
            tables += f"[runtimes.bwrap]\n{common}\n"
            names.append("boxed")
    else:
        # No namespaces or cgroups here: the zygote and its forks still die with the daemon.
        tables += "[runtimes.fork]\nisolation = false\ncgroups = false\n\n"
    runtimes = {"proc": "process", "forked": "fork", "boxed": "bwrap"}
    functions = ""
    for name in names:
        functions += (
            f'[[functions]]\nname = "{name}"\npackage = "{pkg}"\nhandler = "main:handler"\n'
            f'runtime = "{runtimes[name]}"\nmemory_mb = 128\n\n'
        )
    return tables + functions


def test_sigkill_and_restart_leaves_nothing_and_serves(root: Path) -> None:
    sandbox = host_problem() is None
    bwrap = sandbox and shutil.which("bwrap") is not None and shutil.which("setpriv") is not None
    config = write_config(root, config_text(root, sandbox, bwrap))
    names = ["proc", "forked"] + (["boxed"] if bwrap else [])
    parent = f"huselet-test-{root.name}"

    first = Daemon(config)
    try:
        for name in names:  # warm one instance per runtime
            reply = first.invoke(name, {})
            assert reply.status_code == 200, (name, reply.text)
        instances = first.instance_pids()
        assert len(instances) == len(names)
        # Die while busy: a handler in the middle of a long call must not outlive us.
        busy_requests(first, names)
        family = descendants(first.proc.pid)  # instances, zygote, bwrap's own processes
        assert set(instances) <= family
        assert any("huselet.sandbox.zygote" in line for line in describe_pids(sorted(family)))
    finally:
        first.kill()  # SIGKILL: no cleanup runs
    first.wait(10)

    # Nothing outlives the daemon: parent-death signals, process groups, pid namespaces.
    assert wait_until(lambda: not any(pid_alive(p) for p in family), 30), describe_pids(
        [p for p in family if pid_alive(p)]
    )
    if sandbox:
        assert wait_until(lambda: not populated_cgroups(parent), 30), populated_cgroups(parent)
    run = root / "run"
    left_sockets = sorted(p.name for p in (run / "fn").iterdir())
    assert left_sockets == sorted(f"{n}.sock" for n in names)  # stale: nobody listens
    # A function dropped from the config while the daemon was down.
    retired = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    retired.bind(str(run / "fn" / "retired.sock"))
    retired.close()
    # A worker that escaped every other net (it carries the markers our runtimes set).
    stray = subprocess.Popen(
        ["sleep", "60"],
        env={"HUSELET_FUNCTION": "proc", "HUSELET_LINK": str(run / "fn" / "proc.sock")},
        start_new_session=True,
    )

    started = time.monotonic()
    with Daemon(config) as again:
        ready_s = time.monotonic() - started
        reply = again.invoke("proc", {})
        first_reply_s = time.monotonic() - started
        assert reply.status_code == 200, reply.text
        for name in names:
            reply = again.invoke(name, {})
            assert reply.status_code == 200, (name, reply.text)
        print(
            f"\nrestart to ready: {ready_s * 1000:.0f} ms; "
            f"to the first reply (process runtime, cold): {first_reply_s * 1000:.0f} ms"
        )
        assert not (run / "fn" / "retired.sock").exists()

        report = recovery_report(again)
        print(f"recovery: {report['detail']} {report['counters']}")
        assert report["state"] == "ok", report
        assert str(report["detail"]).startswith("previous run left ")
        assert str(report["detail"]).endswith(": cleaned")
        counters = report["counters"]
        assert isinstance(counters, dict)
        assert counters["sockets"] == len(names) + 2  # + admin.sock + retired.sock
        assert counters["failed"] == 0
        try:
            assert stray.wait(5) == -signal.SIGKILL
        finally:
            stray.kill()
            stray.wait()
        assert counters["processes"] == 1  # the stray alone: the rest had died with the daemon
        if sandbox:
            assert counters["cgroups"] > 0  # the pool was left (empty) and is now renewed
        table = again.ctl("health")
        assert table.returncode == 0 and "recovery" in table.stdout
        assert "previous run left" in table.stdout
    if sandbox:
        assert cgroup_leftovers(root) == []


def test_a_busy_oci_container_does_not_survive_the_next_start(root: Path) -> None:
    """runc's detached containers carry no parent-death signal: one whose handler
    is busy when the daemon dies lives on until it returns. The next start
    kills it (through its cgroup) and reports it."""
    problem = host_problem()
    if problem:
        pytest.skip(f"host cannot sandbox: {problem}")
    if shutil.which("runc") is None:
        pytest.skip("runc is not installed")
    pkg = write_package(root / "pkgs", "fn", HANDLER)
    config = write_config(
        root,
        f"""
        [runtimes.oci]
        cgroup_parent = "huselet-test-{root.name}"
        uid_base = {UID_BASE}

        [[functions]]
        name = "contained"
        package = "{pkg}"
        handler = "main:handler"
        runtime = "oci"
        """,
    )
    first = Daemon(config)
    try:
        assert first.invoke("contained", {}).status_code == 200
        busy_requests(first, ["contained"])
        (container,) = first.instance_pids()
    finally:
        first.kill()
    first.wait(10)
    # Whether the container outlived its daemon is the kernel's timing; the
    # sweep can only have found it if it was still there when the sweep began.
    alive_before = pid_alive(container)
    with Daemon(config) as again:
        assert wait_until(lambda: not pid_alive(container), 30), describe_pids([container])
        assert again.invoke("contained", {}).status_code == 200
        report = recovery_report(again)
        print(f"\nrecovery: {report['detail']}")
        assert report["state"] == "ok"
        assert report["counters"].get("processes", 0) <= (1 if alive_before else 0), report
    assert cgroup_leftovers(root) == []
