"""The tarpit of throttled connections: escalating, jittered holds, then close."""

from __future__ import annotations

import pytest

from huselet.gateway.admission_throttle import (
    CLOSE_AFTER,
    JITTER,
    MAX_HOLD_FACTOR,
    RESET_AFTER_S,
    Strikes,
)


def test_each_429_in_a_row_is_held_twice_as_long_up_to_the_cap_then_closes() -> None:
    strikes = Strikes(rng=lambda: 0.0)
    holds, closes = [], []
    for _ in range(CLOSE_AFTER):
        due, close = strikes.throttled(0.25, now=100.0)
        holds.append(due - 100.0)
        closes.append(close)
    expected = [min(0.25 * 2**k, 0.25 * MAX_HOLD_FACTOR) for k in range(CLOSE_AFTER)]
    assert holds == pytest.approx(expected)
    assert closes == [False] * (CLOSE_AFTER - 1) + [True]


def test_holds_are_stretched_by_a_random_part_of_their_jitter_never_shortened() -> None:
    draws = iter([0.0, 0.999, 0.5])
    strikes = Strikes(rng=lambda: next(draws))
    holds = [strikes.throttled(0.25, now=100.0)[0] - 100.0 for _ in range(3)]
    assert holds == pytest.approx([0.25, 0.5 * (1 + JITTER * 0.999), 1.0 * (1 + JITTER * 0.5)])
    # Two connections throttled at the same moment are (almost surely) answered apart.
    a, b = Strikes(), Strikes()
    assert a.throttled(0.25, now=0.0)[0] != b.throttled(0.25, now=0.0)[0]


def test_a_429_after_a_quiet_spell_counts_as_the_first_again() -> None:
    strikes = Strikes(rng=lambda: 0.0)
    for i in range(CLOSE_AFTER - 1):
        strikes.throttled(0.25, now=float(i))  # one a second: still "in a row"
    due, close = strikes.throttled(0.25, now=CLOSE_AFTER - 2 + RESET_AFTER_S + 0.1)
    assert due - (CLOSE_AFTER - 2 + RESET_AFTER_S + 0.1) == pytest.approx(0.25)
    assert not close and strikes.count == 1


def test_no_delay_holds_nothing_but_still_closes_a_persistent_offender() -> None:
    strikes = Strikes()
    results = [strikes.throttled(0.0, now=5.0) for _ in range(CLOSE_AFTER)]
    assert all(due == 5.0 for due, _ in results)
    assert [close for _, close in results][-2:] == [False, True]
