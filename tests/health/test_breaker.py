"""The circuit breaker state machine, driven with explicit time."""

from __future__ import annotations

from huselet.health.breaker import BreakerSettings, BreakerState, CircuitBreaker


def breaker() -> CircuitBreaker:
    return CircuitBreaker(BreakerSettings(failures=3, window_s=10, open_s=2, max_open_s=8))


def test_opens_after_failures_within_the_window_only() -> None:
    b = breaker()
    assert not b.record_failure(0, "x") and not b.record_failure(5, "x")
    assert not b.record_failure(11, "x")  # the one at t=0 left the window
    assert b.state is BreakerState.CLOSED
    assert b.record_failure(12, "ImportError: boom")
    assert b.state is BreakerState.OPEN and not b.admit(12.5)
    assert b.retry_after_s(12.5) == 2
    assert b.describe(12.5)["reason"] == "ImportError: boom"


def test_half_open_admits_one_trial_then_closes_on_success() -> None:
    b = breaker()
    for t in (0, 1, 2):
        b.record_failure(t, "x")
    assert not b.admit(3.9)
    assert b.admit(4.0) and b.state is BreakerState.HALF_OPEN
    assert not b.admit(4.1)  # only one trial in flight
    b.record_success(4.2)
    assert b.state is BreakerState.CLOSED and b.admit(4.3) and b.admit(4.3)


def test_failed_trial_reopens_with_doubled_backoff_capped() -> None:
    b = breaker()
    for t in (0, 1, 2):
        b.record_failure(t, "x")
    now = 4.0
    expected_open = [4, 8, 8]
    for open_s in expected_open:
        assert b.admit(now)
        assert b.record_failure(now, "x")
        assert b.retry_after_s(now) == open_s
        assert not b.admit(now + open_s - 0.01)
        now += open_s
    assert b.opened == 4


def test_a_trial_that_never_resolves_expires() -> None:
    b = breaker()
    for t in (0, 1, 2):
        b.record_failure(t, "x")
    assert b.admit(4.0)
    assert not b.admit(10.0)
    assert b.admit(4.0 + 20.0 + 0.01)  # trial timeout = 10 times the open period


def test_recent_failures_count_since_the_last_success_within_the_window() -> None:
    b = breaker()
    b.record_failure(0, "x")
    b.record_failure(5, "x")
    assert b.recent_failures(6) == 2
    assert b.recent_failures(12) == 1  # the one at t=0 left the window (not yet pruned)
    b.record_success(13)
    assert b.recent_failures(13) == 0
