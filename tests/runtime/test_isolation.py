"""The uid limit of a function's sandboxes (RLIMIT_NPROC): sized to the function's
instances unless ``nproc`` is set, so one function's instances do not run into a
per-uid limit that no host limit stands behind (issue 12)."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
from support import eventually, running_stack, write_package

from huselet.config import FunctionSettings
from huselet.config.table import ConfigTable
from huselet.dispatch.instance import InstanceState
from huselet.errors import ConfigError
from huselet.runtime.isolation import (
    NPROC_FLOOR,
    NPROC_PER_INSTANCE,
    NPROC_ZYGOTES,
    parse_isolation,
    uid_nproc,
)
from huselet.testing.probes import require_sandbox_host, sandbox_settings

NOOP = "def handler(event, context):\n    return {}\n"


def settings(max_instances: int) -> FunctionSettings:
    return FunctionSettings(
        name="f", package=Path("/x"), handler="m:h", max_instances=max_instances
    )


def test_unset_nproc_grows_with_max_instances_and_a_set_one_is_kept() -> None:
    assert uid_nproc(settings(10), None) == NPROC_FLOOR
    big = settings(4000)
    assert uid_nproc(big, None) == 4000 * NPROC_PER_INSTANCE + NPROC_ZYGOTES > 4096
    assert uid_nproc(big, 16) == 16  # the operator's deliberate cap


def test_nproc_key_is_optional_and_validated() -> None:
    assert parse_isolation(ConfigTable({}, "runtimes.fork", Path("/"))).nproc is None
    assert parse_isolation(ConfigTable({"nproc": 64}, "runtimes.fork", Path("/"))).nproc == 64
    with pytest.raises(ConfigError, match=r"runtimes\.fork\.nproc"):
        parse_isolation(ConfigTable({"nproc": 8}, "runtimes.fork", Path("/")))


def max_processes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max processes"):
            return int(line.split()[2])
    raise AssertionError("no Max processes line")


@pytest.mark.parametrize("nproc", [None, 100])
async def test_fork_instances_carry_the_uid_limit(short_tmp: Path, nproc: int | None) -> None:
    require_sandbox_host()
    pkg = write_package(short_tmp, "f", NOOP)
    fn = {"name": "f", "package": str(pkg), "handler": "main:handler", "runtime": "fork"}
    fn |= {"min_instances": 1, "max_instances": 3000}
    extra = {} if nproc is None else {"nproc": nproc}
    async with running_stack(
        short_tmp, [fn], {"fork": sandbox_settings(short_tmp, **extra)}
    ) as stack:
        pool = stack.pool("f")
        with trio.fail_after(60):
            await eventually(
                lambda: any(r.state is InstanceState.IDLE for r in pool.instances.values())
            )
        record = next(r for r in pool.instances.values() if r.state is InstanceState.IDLE)
        assert record.handle is not None and record.handle.pid is not None
        expected = 3000 * NPROC_PER_INSTANCE + NPROC_ZYGOTES if nproc is None else nproc
        assert max_processes(record.handle.pid) == expected
