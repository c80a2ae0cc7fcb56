"""The tarpit of throttled connections: escalating, jittered holds, then close; repeated
429s of one limit paced node-wide."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import pytest

from huselet.gateway.admission_throttle import (
    CLOSE_AFTER,
    JITTER,
    MAX_HOLD_FACTOR,
    PACE_KEYS,
    PACE_PER_S,
    RESET_AFTER_S,
    Pacer,
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


@dataclass
class Throttle:
    pause_s: float = 0.25
    pace_key: str | None = "tenant:noisy"


def test_repeated_429s_of_one_limit_are_answered_at_most_pace_per_s_node_wide() -> None:
    pacer = Pacer()
    conns = [Strikes(rng=lambda: 0.0) for _ in range(32)]
    # Each connection's first 429: its plain hold, however many others the limit refuses.
    firsts = [pacer.throttled(s, Throttle(), now=0.0)[0] for s in conns]
    assert firsts == pytest.approx([0.25] * 32)
    # Their repeats (all due at 0.75 s on their own) go out one per 1/PACE_PER_S, up to
    # the longest hold (MAX_HOLD_FACTOR x 0.25 s) later than that; the rest at that cap.
    repeats = sorted(pacer.throttled(s, Throttle(), now=0.25)[0] for s in conns)
    cap = 0.75 + 0.25 * MAX_HOLD_FACTOR
    paced = [at for at in repeats if at < cap - 1e-9]
    gaps = [b - a for a, b in itertools.pairwise(paced)]
    assert paced[0] == pytest.approx(0.75) and min(gaps) == pytest.approx(1 / PACE_PER_S)
    assert len(paced) >= int(0.25 * MAX_HOLD_FACTOR * PACE_PER_S)  # (the last: float rounding)
    assert repeats[len(paced) :] == pytest.approx([cap] * (32 - len(paced)))
    # The capped ones took no slot: the next repeat goes where the pace left off.
    extra = Strikes(rng=lambda: 0.0)
    pacer.throttled(extra, Throttle(), now=0.0)
    assert pacer.throttled(extra, Throttle(), now=0.25)[0] == pytest.approx(
        paced[-1] + 1 / PACE_PER_S
    )
    # Never earlier than the connection's own hold: a quiet limit adds nothing.
    lone = Strikes(rng=lambda: 0.0)
    pacer.throttled(lone, Throttle(pace_key="tenant:other"), now=100.0)
    due, _ = pacer.throttled(lone, Throttle(pace_key="tenant:other"), now=100.25)
    assert due == pytest.approx(100.25 + 0.5)


def test_pacing_is_per_limit_and_needs_a_hold_and_a_key() -> None:
    pacer = Pacer()
    a, b = Strikes(rng=lambda: 0.0), Strikes(rng=lambda: 0.0)
    for s in (a, b):
        pacer.throttled(s, Throttle(), now=0.0)
    due_a, _ = pacer.throttled(a, Throttle(pace_key="tenant:a"), now=1.0)
    due_b, _ = pacer.throttled(b, Throttle(pace_key="tenant:b"), now=1.0)
    assert due_a == due_b == pytest.approx(1.5)  # different limits: not paced together
    # No hold configured (throttle_delay_ms 0) or no limit named: nothing is paced.
    c, d = Strikes(), Strikes()
    for s in (c, d, c, d):
        assert pacer.throttled(s, Throttle(pause_s=0.0), now=2.0)[0] == 2.0
    e, f = Strikes(rng=lambda: 0.0), Strikes(rng=lambda: 0.0)
    for s in (e, f, e, f):
        due, _ = pacer.throttled(s, Throttle(pace_key=None), now=3.0)
    assert due == pytest.approx(3.5)


def test_the_pacer_forgets_limits_whose_answers_are_past_beyond_its_bound() -> None:
    pacer = Pacer()
    for i in range(PACE_KEYS):
        s = Strikes(rng=lambda: 0.0)
        pacer.throttled(s, Throttle(pace_key=f"source:{i}"), now=0.0)
        pacer.throttled(s, Throttle(pace_key=f"source:{i}"), now=0.0)
    assert len(pacer) == PACE_KEYS
    s = Strikes(rng=lambda: 0.0)
    pacer.throttled(s, Throttle(pace_key="source:new"), now=10.0)
    pacer.throttled(s, Throttle(pace_key="source:new"), now=10.0)
    assert len(pacer) == 1  # every other limit's next answer was long past


def test_a_connection_is_recently_held_from_its_first_429_until_the_count_would_reset() -> None:
    strikes = Strikes(rng=lambda: 0.0)
    assert not strikes.recent(100.0)  # never throttled
    strikes.throttled(0.25, now=100.0)
    assert strikes.recent(100.0) and strikes.recent(100.0 + RESET_AFTER_S)
    assert not strikes.recent(100.0 + RESET_AFTER_S + 0.001)
