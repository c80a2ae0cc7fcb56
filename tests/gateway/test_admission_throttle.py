"""The tarpit of throttled connections: escalating holds on a tick grid, then close."""

from __future__ import annotations

import pytest

from huselet.gateway.admission_throttle import (
    CLOSE_AFTER,
    MAX_HOLD_FACTOR,
    RESET_AFTER_S,
    TICK_S,
    Strikes,
)


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


def test_a_429_after_a_quiet_spell_counts_as_the_first_again() -> None:
    strikes = Strikes()
    for i in range(CLOSE_AFTER - 1):
        strikes.throttled(0.25, now=float(i))  # one a second: still "in a row"
    due, close = strikes.throttled(0.25, now=CLOSE_AFTER - 2 + RESET_AFTER_S + 0.1)
    assert due - (CLOSE_AFTER - 2 + RESET_AFTER_S + 0.1) == pytest.approx(0.25, abs=TICK_S)
    assert not close and strikes.count == 1


def test_no_delay_holds_nothing_but_still_closes_a_persistent_offender() -> None:
    strikes = Strikes()
    results = [strikes.throttled(0.0, now=5.0) for _ in range(CLOSE_AFTER)]
    assert all(due == 5.0 for due, _ in results)
    assert [close for _, close in results][-2:] == [False, True]
