"""Stop reasons are an enum; their words, details and metric labels stay what they were."""

from __future__ import annotations

import pytest

from huselet.dispatch.instance import InstanceRecord
from huselet.dispatch.reasons import NO_RETRY_STOPS, PLANNED_STOPS, StopReason
from huselet.metrics.instances import PLANNED, death_cause


async def test_the_first_stop_wins_and_keeps_its_detail() -> None:
    record = InstanceRecord("fn")
    assert record.stop_text is None
    record.stop(StopReason.LINK_BROKE, OSError("connection reset"))
    record.stop(StopReason.REAPED)
    assert record.stop_reason is StopReason.LINK_BROKE
    assert record.stop_text == "the link to the instance broke (connection reset)"


@pytest.mark.parametrize(
    ("reason", "cause"),
    [
        (StopReason.DEADLINE, "deadline_kill"),
        (StopReason.MISSED_HEARTBEAT, "heartbeat"),
        (StopReason.NOT_READING, "heartbeat"),
        (StopReason.FROZEN, "frozen"),
        (StopReason.LINK_BROKE, "link_error"),
        (StopReason.PROTOCOL_BROKEN, "link_error"),
        (StopReason.LINK_CLOSED, "other"),
        (StopReason.INTERNAL_ERROR, "other"),
    ],
)
async def test_unplanned_stops_map_to_their_death_cause(reason: StopReason, cause: str) -> None:
    record = InstanceRecord("fn")
    record.stop(reason, "detail")
    assert death_cause(record) == cause


def test_every_planned_stop_has_a_metric_label_and_no_fault_does() -> None:
    assert set(PLANNED) == PLANNED_STOPS
    assert NO_RETRY_STOPS <= PLANNED_STOPS
    # The words reach logs and dashboards: they are the enum's values, unchanged.
    assert StopReason.DEADLINE == "request deadline passed"
    assert f"{StopReason.NODE_STOPPING}" == "node stopping"
