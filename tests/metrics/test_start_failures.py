"""Start failures are counted by the reason the start path gave where it failed.

``huselet_cold_start_failures{reason}`` takes the :class:`StartFailure` that
dispatch/lifecycle.py raised at the failing step (not a guess from marks and
elapsed time afterwards). Real ``process`` workers through the in-process
stack, the pool's observer the node's own :class:`InstanceMetrics`. The other
reasons are checked where the suite sets their failure up: ``sandbox`` in
tests/runtime/test_fork_placement.py, ``fetch`` in tests/code/test_packages.py,
``crash`` in tests/test_link_auth.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
from load_support import BROKEN_ON_IMPORT
from support import unconfined_stack

from huselet.dispatch.startretry import MAX_RETRIES
from huselet.errors import InstanceStartFailed
from huselet.metrics.instances import InstanceMetrics

NEVER_LOADS = "import time\ntime.sleep(3600)\ndef handler(event, context):\n    return {}\n"


def labelled(metrics: InstanceMetrics) -> dict[tuple[str, ...], float]:
    """The failures as exposed: {(function, runtime, reason): count}."""
    family = next(m for m in metrics.collect() if m.name == "huselet_cold_start_failures")
    return {
        (s.labels["function"], s.labels["runtime"], s.labels["reason"]): s.value
        for s in family.samples
        if s.name.endswith("_total")
    }


async def test_a_handler_that_raises_at_import_counts_as_import(short_tmp: Path) -> None:
    async with unconfined_stack(short_tmp, "broken", BROKEN_ON_IMPORT) as node:
        metrics = InstanceMetrics()
        node.pool("broken").observer = metrics
        with trio.fail_after(60), pytest.raises(InstanceStartFailed, match="config missing"):
            await node.dispatcher.invoke("broken", b"{}", "json")
        assert labelled(metrics) == {("broken", "process", "import"): 1}


async def test_a_start_past_its_timeout_counts_as_timeout(short_tmp: Path) -> None:
    async with unconfined_stack(
        short_tmp, "never", NEVER_LOADS, start_timeout_ms=1000, timeout_ms=60000
    ) as node:
        metrics = InstanceMetrics()
        node.pool("never").observer = metrics
        with trio.fail_after(120), pytest.raises(InstanceStartFailed, match="did not load"):
            await node.dispatcher.invoke("never", b"{}", "json")
        # The first start and each bounded retry: every one a timeout.
        assert labelled(metrics) == {("never", "process", "timeout"): MAX_RETRIES + 1}
