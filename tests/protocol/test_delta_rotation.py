"""Scheduler address rotation: shuffle, rotate failures to the end, jittered capped backoff."""

from __future__ import annotations

import random

import pytest

from protocol.delta import SchedulerAddressRotation

ADDRS = ["a:1", "b:1", "c:1"]


def test_start_order_is_a_seeded_shuffle_without_duplicates() -> None:
    one = SchedulerAddressRotation([*ADDRS, "a:1"], rng=random.Random(7))
    two = SchedulerAddressRotation(ADDRS, rng=random.Random(7))
    assert one.addresses == two.addresses and sorted(one.addresses) == ADDRS
    orders = {
        tuple(SchedulerAddressRotation(ADDRS, rng=random.Random(s)).addresses) for s in range(30)
    }
    assert len(orders) > 1  # nodes do not all dial the same first address


def test_failed_address_moves_to_the_end() -> None:
    rot = SchedulerAddressRotation(ADDRS, rng=random.Random(1))
    first, second, third = rot.addresses
    rot.failed(first, now=10.0)
    assert rot.addresses == [second, third, first] and rot.current() == second
    rot.failed("not-an-address", now=10.0)  # unknown: only the backoff grows
    assert rot.addresses == [second, third, first] and rot.failures == 2


def test_backoff_is_full_jitter_doubling_per_round_and_capped() -> None:
    rot = SchedulerAddressRotation(ADDRS, rng=random.Random(3), base_delay=1.0, max_delay=8.0)
    ceilings = []
    for _ in range(18):
        ceiling = rot.ceiling()
        retry = rot.failed(rot.current(), now=100.0)
        assert 100.0 <= retry <= 100.0 + ceiling
        ceilings.append(ceiling)
    assert ceilings == [1.0] * 3 + [2.0] * 3 + [4.0] * 3 + [8.0] * 9


def test_after_an_outage_of_any_length_the_next_dial_comes_within_the_cap() -> None:
    """A restarted scheduler is found within max_delay (the default: 5 s)."""
    cap = SchedulerAddressRotation(["only"], rng=random.Random()).max_delay
    assert cap == 5.0
    for seed in range(200):
        rot = SchedulerAddressRotation(["only"], rng=random.Random(seed))
        now, back_at = 0.0, 3600.0  # down for an hour, refusing each dial at once
        while now < back_at:
            now = max(now + 0.001, rot.failed(rot.current(), now))
        assert now - back_at <= cap


def test_jitter_spreads_retries() -> None:
    rot = SchedulerAddressRotation(ADDRS, rng=random.Random(5), base_delay=1.0)
    retries = {rot.failed(rot.current(), now=0.0) for _ in range(3)}
    assert len(retries) == 3


def test_success_resets_backoff_and_keeps_the_good_address_first() -> None:
    rot = SchedulerAddressRotation(ADDRS, rng=random.Random(2), base_delay=1.0)
    for _ in range(7):
        rot.failed(rot.current(), now=0.0)
    good = rot.addresses[1]
    rot.succeeded(good)
    assert rot.failures == 0 and rot.ceiling() == 1.0 and rot.current() == good
    assert rot.retry_at == float("-inf")


def test_invalid_configuration_is_refused() -> None:
    with pytest.raises(ValueError):
        SchedulerAddressRotation([], rng=random.Random())
    with pytest.raises(ValueError):
        SchedulerAddressRotation(ADDRS, rng=random.Random(), base_delay=5, max_delay=1)
