"""The collector's young threshold while instances start (dispatch/startgc.py)."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import trio
from support import unconfined_stack

from huselet.dispatch.instance import InstanceState
from huselet.dispatch.startgc import BURST_GEN0, START_GC, StartCollector

NOOP = "def handler(event, context):\n    return {}\n"


@pytest.fixture
def thresholds() -> Iterator[tuple[int, int, int]]:
    saved = gc.get_threshold()
    gc.set_threshold(700, 10, 10)
    yield gc.get_threshold()
    gc.set_threshold(*saved)


def test_raised_while_starts_run_and_restored_after_the_last(
    thresholds: tuple[int, int, int],
) -> None:
    starts = StartCollector()
    starts.started()
    starts.started()
    assert gc.get_threshold() == (BURST_GEN0, 10, 10)
    starts.finished()
    assert gc.get_threshold()[0] == BURST_GEN0  # one still under way
    starts.finished()
    assert gc.get_threshold() == thresholds
    starts.finished()  # unbalanced: ignored, and the next start still raises it
    starts.started()
    assert gc.get_threshold()[0] == BURST_GEN0 and starts.under_way == 1
    starts.finished()
    assert gc.get_threshold() == thresholds


def test_settings_changed_meanwhile_are_kept(thresholds: tuple[int, int, int]) -> None:
    starts = StartCollector()
    starts.started()
    gc.set_threshold(2000, 5, 5)  # an embedder's own choice while a start ran
    starts.finished()
    assert gc.get_threshold() == (2000, 5, 5)
    gc.set_threshold(0)  # collection off: left off
    starts.started()
    assert gc.get_threshold()[0] == 0
    starts.finished()


async def test_a_burst_of_starts_runs_with_the_raised_threshold(
    short_tmp: Path, thresholds: tuple[int, int, int]
) -> None:
    count = 8
    async with unconfined_stack(short_tmp, "f", NOOP, min_instances=1) as node:
        pool = node.pool("f")
        seen: set[int] = set()
        with trio.fail_after(120):
            while pool.state_counts[InstanceState.IDLE] < 1:
                await trio.sleep(0.01)
            assert START_GC.under_way == 0 and gc.get_threshold() == thresholds
            pool.settings = replace(pool.settings, min_instances=count, max_instances=count)
            pool.ensure_capacity()
            while pool.state_counts[InstanceState.IDLE] < count:
                if pool.starting:
                    seen.add(gc.get_threshold()[0])
                await trio.lowlevel.checkpoint()
        assert seen == {BURST_GEN0}
        assert START_GC.under_way == 0 and gc.get_threshold() == thresholds
