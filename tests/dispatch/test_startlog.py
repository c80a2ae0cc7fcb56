"""The pool's "instance ready" log: a line per lone start, one summary line per burst."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import pytest
import trio
from support import unconfined_stack

from huselet.dispatch.instance import InstanceState

NOOP = "def handler(event, context):\n    return {}\n"
BURST = 6


def ready_lines(caplog: pytest.LogCaptureFixture, msg: str, level: int) -> list[dict[str, object]]:
    return [
        r.fields  # type: ignore[attr-defined]
        for r in caplog.records
        if r.name == "huselet.pool" and r.getMessage() == msg and r.levelno == level
    ]


async def idle_count(pool: object, count: int) -> None:
    with trio.fail_after(120):
        while pool.state_counts[InstanceState.IDLE] < count:  # type: ignore[attr-defined]
            await trio.sleep(0.01)


async def test_a_lone_start_logs_its_line_and_a_burst_one_summary(
    short_tmp: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="huselet.pool")
    async with unconfined_stack(short_tmp, "f", NOOP, min_instances=1) as node:
        pool = node.pool("f")
        await idle_count(pool, 1)
        (lone,) = ready_lines(caplog, "instance ready", logging.INFO)
        assert lone["function"] == "f" and lone["instance"] and lone["pid"]
        assert ready_lines(caplog, "instances ready", logging.INFO) == []
        # A burst: every instance's line goes to debug, one info line sums it up
        # once the pool has no start under way.
        pool.settings = replace(pool.settings, min_instances=1 + BURST, max_instances=1 + BURST)
        pool.ensure_capacity()
        await idle_count(pool, 1 + BURST)
        assert pool.starting == 0
        (summary,) = ready_lines(caplog, "instances ready", logging.INFO)
        assert summary["function"] == "f" and summary["count"] == BURST
        assert 0 < summary["start_ms_mean"] <= summary["start_ms_max"]  # type: ignore[operator]
        assert len(ready_lines(caplog, "instance ready", logging.INFO)) == 1
        debug = ready_lines(caplog, "instance ready", logging.DEBUG)
        assert len({d["instance"] for d in debug}) == BURST
        # The burst is over: a lone start logs its own line again.
        victim = next(iter(pool.instances.values()))
        victim.handle.kill()
        with trio.fail_after(120):
            while len(ready_lines(caplog, "instance ready", logging.INFO)) < 2:
                await trio.sleep(0.01)
        assert len(ready_lines(caplog, "instances ready", logging.INFO)) == 1
