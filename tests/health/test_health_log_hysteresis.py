"""Health state changes are logged on transitions, with hysteresis against flapping."""

from __future__ import annotations

import logging

import pytest

from huselet.health import supervisor
from huselet.health.supervisor import HealthState, LoopReport


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    clock = Clock()
    monkeypatch.setattr(supervisor.time, "monotonic", clock)
    return clock


def changes(caplog: pytest.LogCaptureFixture) -> list[dict]:
    return [
        {"msg": r.getMessage(), **r.fields}  # type: ignore[attr-defined]
        for r in caplog.records
        if r.getMessage().startswith("health state")
    ]


def test_one_change_is_logged_at_once(clock: Clock, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="huselet")
    report = LoopReport("event_loop")
    report.set(HealthState.OK, "fine")
    assert changes(caplog) == []
    report.set(HealthState.DEGRADED, "lag 120 ms")
    (record,) = changes(caplog)
    assert (record["old"], record["new"], record["changes"]) == ("ok", "degraded", 1)


def test_flapping_costs_one_line_per_window(clock: Clock, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="huselet")
    report = LoopReport("event_loop")
    report.set(HealthState.DEGRADED, "lag")  # logged: the first change
    for i in range(40):  # 4 s of flapping every 100 ms
        clock.now += 0.1
        report.set(HealthState.OK if i % 2 == 0 else HealthState.DEGRADED, "lag")
    assert len(changes(caplog)) == 1
    assert report.state is HealthState.DEGRADED  # the state itself is always current
    clock.now += 1.5  # the window has passed: where it ended up, and how it got there
    report.set(HealthState.OK, "lag 3 ms")
    records = changes(caplog)
    assert len(records) == 2
    assert (records[1]["old"], records[1]["new"], records[1]["changes"]) == ("degraded", "ok", 41)
    clock.now += 10
    report.set(HealthState.OK, "lag 2 ms")  # no change: nothing to say
    assert len(changes(caplog)) == 2
    assert report.counters["state_changes"] == 42


def test_flapping_back_to_the_logged_state_is_summarised(
    clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="huselet")
    report = LoopReport("memory")
    report.set(HealthState.DEGRADED)
    clock.now += 1
    report.set(HealthState.OK)
    clock.now += 1
    report.set(HealthState.DEGRADED)
    clock.now += 5
    report.set(HealthState.DEGRADED)
    records = changes(caplog)
    assert [r["msg"] for r in records] == ["health state changed", "health state flapped"]
    assert records[1]["changes"] == 2
