"""The bwrap runtime with real bubblewrap sandboxes: the same escape attempts as
the fork runtime, the pids and memory limits through the cgroup pool, cleanup."""

from __future__ import annotations

import functools
import shutil
from pathlib import Path

import pytest
import trio
from sandbox_support import (
    UID_BASE,
    assert_confined,
    cgroup_leftovers,
    describe_pids,
    function,
    invoke_json,
    probe_escapes,
    processes_of_uids,
    require_sandbox_host,
    sandbox_settings,
)
from support import running_stack, write_package

from huselet.errors import InstanceLost

pytestmark = pytest.mark.usefixtures("bwrap_host")


@pytest.fixture
def bwrap_host() -> None:
    require_sandbox_host()
    if shutil.which("bwrap") is None or shutil.which("setpriv") is None:
        pytest.skip("bubblewrap (bwrap) or setpriv is not installed")


fn = functools.partial(function, "bwrap")


invoke = invoke_json


async def test_escape_attempts_fail(short_tmp: Path) -> None:
    got = await probe_escapes(short_tmp, "bwrap")
    assert_confined(got, visible_pids=[1, 2])  # bwrap's reaper and the worker


HOG = """
def handler(event, ctx):
    blocks = []
    for _ in range(64):
        blocks.append(b"x" * (8 << 20))
    return len(blocks)
"""


async def test_memory_limit_reports_out_of_memory_and_cleans_up(short_tmp: Path) -> None:
    pkg = write_package(short_tmp, "hog", HOG)
    async with running_stack(
        short_tmp, [fn("hog", pkg, memory_mb=64)], {"bwrap": sandbox_settings(short_tmp)}
    ) as stack:
        assert cgroup_leftovers(short_tmp)
        with trio.fail_after(30), pytest.raises(InstanceLost) as lost:
            await invoke(stack, "hog", {})
    assert "out of memory" in str(lost.value)
    assert cgroup_leftovers(short_tmp) == []
    left = processes_of_uids(UID_BASE, UID_BASE + 100)
    assert left == [], describe_pids(left)


FORK_BOMB = """
import os, time

def handler(event, ctx):
    children = 0
    while children < 10_000:
        try:
            pid = os.fork()
        except OSError as exc:
            return {"forked": children, "error": exc.strerror}
        if pid == 0:
            time.sleep(60)
            os._exit(0)
        children += 1
    return {"forked": children, "error": None}
"""


async def test_fork_bomb_is_held_by_the_pids_limit(short_tmp: Path) -> None:
    pkg = write_package(short_tmp, "bomb", FORK_BOMB)
    settings = sandbox_settings(short_tmp, pids_max=16)
    async with running_stack(short_tmp, [fn("bomb", pkg)], {"bwrap": settings}) as stack:
        with trio.fail_after(30):
            got = await invoke(stack, "bomb", {})
    assert got["forked"] < 16 and got["error"] is not None
    left = processes_of_uids(UID_BASE, UID_BASE + 100)
    assert left == [], describe_pids(left)
