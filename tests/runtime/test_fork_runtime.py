"""What only the fork runtime does, with real zygotes, namespaces, seccomp and
cgroups: identity, descriptor hygiene, zygote death and eviction, cleanup. What
every runtime must do (escape probes, fork bombs, OOM, kill, deadline) is in
the conformance suite (test_conformance.py)."""

from __future__ import annotations

import os
import signal
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import trio
from support import running_stack, write_package

from huselet.config import NodeSettings
from huselet.dispatch.reasons import StopReason
from huselet.runtime import RuntimeConfigError
from huselet.runtime.cgroups import Cgroup
from huselet.runtime.fork import ForkRuntime
from huselet.testing.conformance import invoke_json
from huselet.testing.probes import (
    UID_BASE,
    cgroup_leftovers,
    describe_pids,
    processes_of_uids,
    require_sandbox_host,
    sandbox_settings,
)

pytestmark = pytest.mark.usefixtures("sandbox_host")


@pytest.fixture
def sandbox_host() -> None:
    require_sandbox_host()


def fn(name: str, pkg: Path, **extra: object) -> dict[str, object]:
    return {"name": name, "package": str(pkg), "handler": "main:handler", "runtime": "fork"} | extra


invoke = invoke_json


IDENTITY = """
import ctypes, os, socket
_getenv = ctypes.CDLL(None).getenv  # the C environment: what a child process would inherit
_getenv.restype = ctypes.c_char_p
STARTED = os.getpid()  # the zygote's pid, captured by init code
def _uid_of(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            return int(next(l for l in f if l.startswith("Uid:")).split()[1])
    except (OSError, StopIteration):
        return None

# hidepid: only processes of its own uid (itself; at most leftovers of that uid)
ZYGOTE_SAW = {int(p): _uid_of(p) for p in os.listdir("/proc") if p.isdigit()}

def handler(event, ctx):
    fds = sorted(int(fd) for fd in os.listdir("/proc/self/fd"))
    return {
        "pid": os.getpid(),
        "zygote_pid": STARTED,
        "zygote_saw": ZYGOTE_SAW,
        "instance": os.environ.get("HUSELET_INSTANCE_ID"),
        "c_instance": (_getenv(b"HUSELET_INSTANCE_ID") or b"").decode(),
        "ctx_instance": ctx.instance_id,
        "token_in_env": "HUSELET_TOKEN" in os.environ,
        "fn_env": os.environ.get("FN_VAR"),
        "fds": fds,
        "fd3": os.readlink("/proc/self/fd/3"),
        "hostname": socket.gethostname(),
    }
"""


async def test_instances_have_own_identity_and_only_their_descriptors(short_tmp: Path) -> None:
    pkg = write_package(short_tmp, "f", IDENTITY)
    functions = [fn("f", pkg, env={"FN_VAR": "v"}, max_instances=2)]
    async with running_stack(short_tmp, functions, {"fork": sandbox_settings(short_tmp)}) as stack:
        with trio.fail_after(60):
            first = await invoke(stack, "f", {})
        pool = stack.pool("f")
        (record,) = pool.instances.values()
        assert first["instance"] == first["ctx_instance"] == first["c_instance"] == record.id
        assert first["pid"] == 1  # PID 1 of its own namespace
        assert record.handle.pid != first["zygote_pid"]
        # Not the daemon, not the host: only its own uid's processes, itself among them.
        saw = {int(pid): uid for pid, uid in first["zygote_saw"].items()}
        assert first["zygote_pid"] in saw and os.getpid() not in saw
        assert set(saw.values()) <= {UID_BASE, None}, saw  # None: gone while listed
        assert not first["token_in_env"] and first["fn_env"] == "v"
        # 0, 1, 2, the link on 3 and the descriptor listing /proc/self/fd: nothing else.
        assert first["fds"][:4] == [0, 1, 2, 3] and len(first["fds"]) == 5, first["fds"]
        assert first["fd3"].startswith("socket:")
        assert first["hostname"] == "f"
        # The instance is the daemon's own child, reported with the daemon-side pid.
        status = Path(f"/proc/{record.handle.pid}/status").read_text()
        assert f"PPid:\t{os.getpid()}" in status
        assert f"Uid:\t{UID_BASE}" in status


async def test_zygote_death_is_survived_and_rebuilt(short_tmp: Path) -> None:
    pkg = write_package(short_tmp, "f", IDENTITY)
    functions = [fn("f", pkg, max_instances=1)]
    async with running_stack(short_tmp, functions, {"fork": sandbox_settings(short_tmp)}) as stack:
        with trio.fail_after(30):
            before = await invoke(stack, "f", {})
            pool = stack.pool("f")
            (record,) = pool.instances.values()
            runtime: ForkRuntime = stack.runtimes["fork"]  # type: ignore[assignment]
            (slot,) = runtime._slots.values()
            zygote = slot.process
            assert zygote is not None
            os.kill(zygote.pid, signal.SIGKILL)
            await zygote.exited.wait()
            # The running instance is the daemon's child, not the zygote's: it lives on.
            still = await invoke(stack, "f", {})
            assert still["instance"] == before["instance"]
            record.stop(StopReason.INTERNAL_ERROR)  # unplanned: a kill, not a SHUTDOWN
            while pool.instances:
                await trio.sleep(0.01)
            # The next start waits for the rebuilt zygote.
            after = await invoke(stack, "f", {})
            assert after["instance"] != before["instance"]
            assert slot.generation == 2 and slot.process is not zygote


async def test_a_zygote_whose_own_cgroup_is_gone_is_not_moved_home(short_tmp: Path) -> None:
    # A move home runs in a worker thread; the zygote's own cgroup can be removed
    # meanwhile (its slot closing, the runtime stopping). That is not an error of
    # the instance being released: evicting ends, and nothing raises.
    pkg = write_package(short_tmp, "f", IDENTITY)
    functions = [fn("f", pkg, max_instances=1)]
    async with running_stack(short_tmp, functions, {"fork": sandbox_settings(short_tmp)}) as stack:
        with trio.fail_after(30):
            await invoke(stack, "f", {})
            runtime: ForkRuntime = stack.runtimes["fork"]  # type: ignore[assignment]
            (slot,) = runtime._slots.values()
            zygote = slot.process
            assert zygote is not None and zygote.cgroup is not None
            # Settle first: after a start the zygote goes home off the start's path.
            await zygote.go_home()
            home, parked = zygote.cgroup, zygote.where
            assert parked is home
            zygote.cgroup = Cgroup(home.host, home.rel + "-removed")  # never created
            try:
                await zygote.evict_from(parked)
                assert zygote.where is None
                await zygote.go_home()  # again: still nothing to go back to
            finally:
                zygote.cgroup = home
            await zygote.go_home()
            assert zygote.where is home and home.contains(zygote.pid)


async def test_everything_is_cleaned_up_after_stop(short_tmp: Path) -> None:
    pkg = write_package(short_tmp, "f", IDENTITY)
    settings = sandbox_settings(short_tmp)
    async with running_stack(
        short_tmp, [fn("f", pkg, max_instances=4)], {"fork": settings}
    ) as stack:
        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                for _ in range(4):
                    nursery.start_soon(invoke, stack, "f", {})
        assert cgroup_leftovers(short_tmp)
    assert cgroup_leftovers(short_tmp) == []
    left = processes_of_uids(UID_BASE, UID_BASE + 100)
    assert left == [], describe_pids(left)
    assert not (short_tmp / "run" / "sandbox" / "fork").exists()


async def test_graceful_stop_reaches_pid_1(short_tmp: Path) -> None:
    pkg = write_package(short_tmp, "f", IDENTITY)
    async with running_stack(
        short_tmp, [fn("f", pkg)], {"fork": sandbox_settings(short_tmp)}
    ) as stack:
        with trio.fail_after(60):
            await invoke(stack, "f", {})
            (record,) = stack.pool("f").instances.values()
            handle = record.handle
            handle.terminate()
            status = await handle.wait()
    assert status.code == 128 + signal.SIGTERM


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"bogus": 1}, "runtimes.fork.bogus: unknown key"),
        ({"network": "bridge"}, 'runtimes.fork.network: expected one of none, host, got "bridge"'),
        ({"network": 1}, "runtimes.fork.network: expected one of none, host, got 1"),
        ({"isolation": "yes"}, 'runtimes.fork.isolation: expected true or false, got "yes"'),
        ({"uid_base": 0}, "runtimes.fork.uid_base: expected an integer ≥ 1000, got 0"),
        ({"uid_base": 2**31 - 5}, "runtimes.fork.uid_count: range exceeds 2^31"),
        ({"cgroup_pool": -1}, "runtimes.fork.cgroup_pool: expected a non-negative integer"),
        (
            {"zygote_memory_mb": "big"},
            'runtimes.fork.zygote_memory_mb: expected an integer ≥ 16, got "big"',
        ),
        ({"cpu_cores": "2"}, 'runtimes.fork.cpu_cores: expected a number ≥ 0, got "2"'),
        ({"cpu_cores": True}, "runtimes.fork.cpu_cores: expected a number ≥ 0, got true"),
        ({"ro_paths": ["rel"]}, "runtimes.fork.ro_paths: expected an array of absolute paths"),
        ({"cgroup_parent": ""}, 'runtimes.fork.cgroup_parent: expected a non-empty string, got ""'),
        ({"cgroup_parent": "a/../../x"}, "runtimes.fork.cgroup_parent: must not contain .."),
    ],
)
def test_table_errors_name_the_key(short_tmp: Path, table: dict[str, Any], message: str) -> None:
    # The one ConfigTable validator, refused as the runtime's own typed error
    # (what run, run --check and reload turn into a refusal).
    node = NodeSettings("n", short_tmp, short_tmp)
    with pytest.raises(RuntimeConfigError) as refused:
        ForkRuntime(table, node=node)
    assert str(refused.value).startswith(message), str(refused.value)


def test_a_valid_table_is_read_with_its_types(short_tmp: Path) -> None:
    table = {"cpu_cores": 2, "ro_paths": ["/opt/x"], "cgroup_pool": 0, "zygotes": "lazy"}
    runtime = ForkRuntime(table, node=NodeSettings("n", short_tmp, short_tmp))
    assert runtime.isolation.cpu_cores == 2.0 and isinstance(runtime.isolation.cpu_cores, float)
    assert runtime.isolation.ro_paths == ("/opt/x",) and runtime.isolation.cgroup_pool == 0
    assert runtime.zygote_mode == "lazy"


async def test_zygotes_beyond_the_memory_budget_are_evicted(short_tmp: Path) -> None:
    a = write_package(short_tmp, "a", IDENTITY)
    b = write_package(short_tmp, "b", IDENTITY)
    settings = sandbox_settings(short_tmp, zygotes="lazy", zygote_budget_mb=16)
    async with running_stack(short_tmp, [fn("a", a), fn("b", b)], {"fork": settings}) as stack:
        runtime: ForkRuntime = stack.runtimes["fork"]  # type: ignore[assignment]
        with trio.fail_after(60):
            assert runtime._slots == {}  # lazy: nothing built before the first request
            await invoke(stack, "a", {})
            (first,) = runtime._slots.values()
            await invoke(stack, "b", {})  # a second ~10 MB zygote does not fit 16 MB
            assert first.closed
            assert [s.key[0] for s in runtime._slots.values() if not s.closed] == ["b"]
            await invoke(stack, "a", {})  # evicted, not broken: rebuilt on demand


async def test_a_quiet_runtime_checks_no_zygote_budget_per_pass(short_tmp: Path) -> None:
    # Housekeeping runs every second; with no start, no new zygote and none
    # (re)built since its last pass, the zygotes' memory stands as it was: the
    # budget is not checked (each check reads every zygote's memory file). A
    # start, or a zygote rebuilt after it died, makes the next pass check again.
    pkg = write_package(short_tmp, "f", IDENTITY)
    settings = sandbox_settings(short_tmp)
    async with running_stack(short_tmp, [fn("f", pkg)], {"fork": settings}) as stack:
        runtime: ForkRuntime = stack.runtimes["fork"]  # type: ignore[assignment]
        checks = 0
        enforce = runtime._enforce_budget

        def counted(incoming: int) -> None:
            nonlocal checks
            checks += incoming == 0  # the housekeeping's check (a new zygote asks its own)
            enforce(incoming)

        runtime._enforce_budget = counted  # type: ignore[method-assign]

        async def passes(n: int) -> None:
            until = runtime.maintain_passes + n
            while runtime.maintain_passes < until:
                await trio.sleep(0.05)

        with trio.fail_after(120):
            await invoke(stack, "f", {})
            (slot,) = runtime._slots.values()
            await passes(2)  # the pass after the start has checked it
            checks = 0
            await passes(2)
            assert checks == 0
            pool = stack.pool("f")
            pool.settings = replace(pool.settings, min_instances=2)
            pool.ensure_capacity()  # a start: the budget is checked again
            while runtime.starts < 2:
                await trio.sleep(0.05)
            await passes(2)
            assert checks >= 1
            checks = 0
            await passes(2)
            assert checks == 0
            old = slot.process
            assert old is not None and old.pid is not None
            os.kill(old.pid, signal.SIGKILL)  # rebuilt by its slot, no start needed
            while slot.process is old or slot.process is None or not slot.process.is_ready:
                await trio.sleep(0.05)
            await passes(2)
            assert checks >= 1
