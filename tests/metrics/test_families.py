"""Labelled metric families take their help text from one table."""

from __future__ import annotations

import pytest

from huselet.health.breaker import BreakerState
from huselet.metrics.families import HELP, counter, gauge, one_hot


def test_a_family_carries_its_help_and_labels() -> None:
    family = counter("huselet_pool_events", "function", "event")
    assert family.documentation == HELP["huselet_pool_events"]
    family.add_metric(["f", "ok"], 3)
    assert [(s.labels, s.value) for s in family.samples] == [({"function": "f", "event": "ok"}, 3)]


def test_an_undeclared_metric_is_refused() -> None:
    with pytest.raises(KeyError):
        gauge("huselet_not_declared", "function")


def test_one_hot_marks_only_the_current_state() -> None:
    family = gauge("huselet_breaker_state", "function", "state")
    one_hot(family, ["f"], BreakerState, BreakerState.OPEN)
    values = {s.labels["state"]: s.value for s in family.samples}
    assert values == {state.value: float(state is BreakerState.OPEN) for state in BreakerState}
