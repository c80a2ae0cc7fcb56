"""The backoff of a retried start (the retry itself runs end to end in
tests/e2e/test_start_retry_e2e.py)."""

from __future__ import annotations

from huselet.dispatch.startretry import BASE_BACKOFF_S, MAX_BACKOFF_S, backoff_s


def test_backoff_doubles_per_consecutive_failure_up_to_its_cap() -> None:
    assert backoff_s(1) == BASE_BACKOFF_S
    assert backoff_s(2) == 2 * BASE_BACKOFF_S
    assert backoff_s(50) == MAX_BACKOFF_S
