"""The tarpit of throttled connections: escalating holds on a tick grid, then close."""

from __future__ import annotations

import pytest

from huselet.gateway.admission_throttle import CLOSE_AFTER, MAX_HOLD_FACTOR, TICK_S, Strikes


def test_each_429_in_a_row_is_held_twice_as_long_up_to_the_cap_then_closes() -> None:
    strikes = Strikes()
    holds, closes = [], []
    for _ in range(CLOSE_AFTER):
        due, close = strikes.throttled(0.25, now=100.0)
        holds.append(due - 100.0)
        closes.append(close)
    expected = [min(0.25 * 2**k, 0.25 * MAX_HOLD_FACTOR) for k in range(CLOSE_AFTER)]
    assert holds == pytest.approx(expected)
    assert closes == [False] * (CLOSE_AFTER - 1) + [True]


def test_holds_end_on_the_tick_grid_and_never_early() -> None:
    strikes = Strikes()
    due, _ = strikes.throttled(0.25, now=100.012)
    assert due >= 100.262
    assert round(due / TICK_S, 6) == round(due / TICK_S)  # on the grid
    assert due - 100.262 < TICK_S


def test_any_other_reply_starts_the_count_again() -> None:
    strikes = Strikes()
    for _ in range(CLOSE_AFTER - 1):
        strikes.throttled(0.25, now=0.0)
    strikes.clear()
    due, close = strikes.throttled(0.25, now=0.0)
    assert due == pytest.approx(0.25) and not close


def test_no_delay_holds_nothing_but_still_closes_a_persistent_offender() -> None:
    strikes = Strikes()
    results = [strikes.throttled(0.0, now=5.0) for _ in range(CLOSE_AFTER)]
    assert all(due == 5.0 for due, _ in results)
    assert [close for _, close in results][-2:] == [False, True]
