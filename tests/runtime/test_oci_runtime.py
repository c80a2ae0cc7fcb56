"""The oci runtime with real runc containers: escape attempts, OOM through the
cgroup runc creates, and that containers, bundles and cgroups are gone after."""

from __future__ import annotations

import functools
import shutil
from pathlib import Path

import pytest
import trio
from sandbox_support import (
    UID_BASE,
    assert_confined,
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
from huselet.runtime.cgroups import hierarchy_roots

pytestmark = pytest.mark.usefixtures("runc_host")


@pytest.fixture
def runc_host() -> None:
    require_sandbox_host()
    if shutil.which("runc") is None:
        pytest.skip("runc is not installed")


fn = functools.partial(function, "oci")


invoke = invoke_json


async def test_escape_attempts_fail_and_nothing_is_left(short_tmp: Path) -> None:
    got = await probe_escapes(short_tmp, "oci")
    assert_confined(got, visible_pids=[1])
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
