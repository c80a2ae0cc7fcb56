"""Where a fork instance is born, with real zygotes and cgroups: on cgroup v1
the zygote places itself in each instance's group (no lock, no thread trip:
requests queue back to back), every queued start gets its instance in its own
group, the zygote is home once idle, and a start whose group it cannot enter
fails alone, with the reason, while the zygote serves on."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import trio
from support import running_stack, write_package

from huselet.dispatch.counters import PoolCounter
from huselet.dispatch.instance import InstanceState
from huselet.metrics.instances import InstanceMetrics
from huselet.runtime.fork import ForkRuntime
from huselet.runtime.zygote import ZygoteProcess
from huselet.testing.conformance import invoke_json
from huselet.testing.probes import UID_BASE, require_sandbox_host, sandbox_settings

pytestmark = pytest.mark.usefixtures("sandbox_host")

SLOW = """
import time
def handler(event, ctx):
    time.sleep(event.get("sleep", 0))
    return {"instance": ctx.instance_id}
"""


@pytest.fixture
def sandbox_host() -> None:
    require_sandbox_host()


def fn(name: str, pkg: Path, **extra: object) -> dict[str, object]:
    return {"name": name, "package": str(pkg), "handler": "main:handler", "runtime": "fork"} | extra


def memory_group(pid: int) -> str:
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(",") or controllers == "":
            return path
    raise AssertionError(f"no memory cgroup for {pid}")


def the_zygote(runtime: ForkRuntime) -> ZygoteProcess:
    (slot,) = runtime._slots.values()
    assert slot.process is not None
    return slot.process


async def home_when_idle(zygote: ZygoteProcess) -> None:
    assert zygote.cgroup is not None and zygote.pid is not None
    while not zygote.cgroup.contains(zygote.pid):
        await trio.sleep(0.01)


@pytest.mark.parametrize("placer", ["zygote", "daemon"])
async def test_queued_starts_each_get_an_instance_in_its_own_group(
    short_tmp: Path, placer: str
) -> None:
    # Without a function uid (isolation off) the daemon moves the zygote
    # instead, one start at a time: the same outcome.
    pkg = write_package(short_tmp, "f", SLOW)
    count = 12
    functions = [fn("f", pkg, min_instances=count, max_instances=count, memory_mb=96)]
    extra = {} if placer == "zygote" else {"isolation": False}
    settings = {"fork": sandbox_settings(short_tmp, **extra)}
    async with running_stack(short_tmp, functions, settings) as stack:
        runtime: ForkRuntime = stack.runtimes["fork"]  # type: ignore[assignment]
        assert runtime._cgroups is not None
        if runtime._cgroups.host.version != 1 and placer == "zygote":
            pytest.skip("the zygote places itself on cgroup v1 only")
        owner = UID_BASE if placer == "zygote" else None
        pool = stack.pool("f")
        with trio.fail_after(60):
            while sum(r.state is InstanceState.IDLE for r in pool.instances.values()) < count:
                await trio.sleep(0.02)
            zygote = the_zygote(runtime)
            assert zygote.placer_uid == owner
            groups = set()
            for record in pool.instances.values():
                assert record.handle is not None and record.handle.pid is not None
                handle = record.handle
                cgroup = handle.cgroup  # type: ignore[attr-defined]
                assert memory_group(handle.pid) == "/" + cgroup.rel
                assert cgroup.owner == owner
                # Its limit (written when the groups were reserved, or at the start).
                limit = "memory.max" if cgroup.host.version == 2 else "memory.limit_in_bytes"
                assert int((cgroup._mem_dir / limit).read_text()) == 96 << 20
                for d in cgroup.dirs.values():
                    assert (d / "cgroup.procs").stat().st_uid == (owner or 0)
                groups.add(cgroup.rel)
            assert len(groups) == count
            await home_when_idle(zygote)
            assert pool.counters[PoolCounter.START_FAILURES] == 0
            # Served, and by instances that were born where they are.
            result = await invoke_json(stack, "f", {})
            assert result["instance"] in pool.instances


async def test_a_group_the_zygote_cannot_enter_fails_that_start_alone(short_tmp: Path) -> None:
    pkg = write_package(short_tmp, "f", SLOW)
    functions = [fn("f", pkg, max_instances=2)]
    async with running_stack(short_tmp, functions, {"fork": sandbox_settings(short_tmp)}) as stack:
        runtime: ForkRuntime = stack.runtimes["fork"]  # type: ignore[assignment]
        cgroups = runtime._cgroups
        assert cgroups is not None
        if cgroups.host.version != 1:
            pytest.skip("the zygote places itself on cgroup v1 only")
        pool = stack.pool("f")
        pool.observer = metrics = InstanceMetrics()
        with trio.fail_after(60):
            first = await invoke_json(stack, "f", {})  # one instance, idle from now on
            zygote = the_zygote(runtime)
            # A group of the function's uid whose cgroup.procs it may not open
            # (as if its owner were changed behind the daemon's back): the next
            # start of the function takes it.
            broken = await cgroups.acquire(64 << 20, owner=UID_BASE)
            for d in broken.dirs.values():
                os.chown(d / "cgroup.procs", 0, -1)
            await cgroups.release(broken)
            async with trio.open_nursery() as nursery:
                for _ in range(2):  # the second request asks for a second instance
                    nursery.start_soon(invoke_json, stack, "f", {"sleep": 0.3})
            assert pool.counters[PoolCounter.START_FAILURES] == 1
            assert "cannot enter the instance's cgroup" in (pool.last_start_error or "")
            assert "Permission denied" in (pool.last_start_error or "")
            # Typed where the runtime failed it: a sandbox failure, not a crash.
            assert dict(metrics.functions["f"].failures) == {"sandbox": 1}
            # The zygote is the same one, home, and starts the next instance.
            assert the_zygote(runtime) is zygote and zygote.is_ready
            await home_when_idle(zygote)
            async with trio.open_nursery() as nursery:
                for _ in range(2):
                    nursery.start_soon(invoke_json, stack, "f", {"sleep": 0.3})
            assert first["instance"] in pool.instances and len(pool.instances) == 2
            assert pool.counters[PoolCounter.START_FAILURES] == 1
