"""The per-function log ring behind ``huselet ctl logs``."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest

from huselet.log import get_logger
from huselet.observe.ring import LogRing
from huselet.observe.story import RateSampler

SERVED = {"alpha", "beta"}


@pytest.fixture
def ring(attach_ring: Callable[[LogRing], LogRing]) -> Iterator[LogRing]:
    try:
        yield attach_ring(LogRing(5, lambda name: name in SERVED))
    finally:
        SERVED.clear()
        SERVED.update({"alpha", "beta"})


def test_records_naming_a_served_function_are_kept_bounded(ring: LogRing) -> None:
    log = get_logger("test")
    for i in range(8):
        log.info("line", function="alpha", i=i, request_id=f"r{i % 2}")
    log.info("other", function="nobody")  # not served: no ring is made for it
    log.debug("too quiet", function="alpha")
    log.info("no function")
    got = ring.query("alpha")
    assert got is not None
    assert [r["i"] for r in got["records"]] == [3, 4, 5, 6, 7]  # the newest 5
    assert ring.query("nobody") is None
    only = ring.query("alpha", request_id="r1")
    assert only is not None and [r["i"] for r in only["records"]] == [3, 5, 7]
    assert got["records"][0]["ts"].endswith("Z")


def test_a_cursor_returns_only_newer_records(ring: LogRing) -> None:
    log = get_logger("test")
    log.info("one", function="beta")
    first = ring.query("beta")
    assert first is not None and len(first["records"]) == 1
    log.info("two", function="beta")
    later = ring.query("beta", after_seq=first["next_seq"])
    assert later is not None and [r["msg"] for r in later["records"]] == ["two"]


def test_since_and_limit(ring: LogRing) -> None:
    ring.append("info", "x", "old", {"function": "alpha"})
    seq, _, *rest = ring._rings["alpha"][-1]
    ring._rings["alpha"][-1] = (seq, time.time() - 600, *rest)  # recorded ten minutes ago
    get_logger("test").info("new", function="alpha", obj=object())
    recent = ring.query("alpha", since_s=60)
    assert recent is not None and [r["msg"] for r in recent["records"]] == ["new"]
    assert isinstance(recent["records"][0]["obj"], str)  # the admin socket can carry it
    assert recent["records"][0]["component"] == "test"
    capped = ring.query("alpha", limit=1)
    assert capped is not None and [r["msg"] for r in capped["records"]] == ["new"]


def test_a_removed_function_loses_its_ring(ring: LogRing) -> None:
    ring.append("info", "x", "kept", {"function": "beta"})
    SERVED.discard("beta")
    assert ring.query("beta") is None
    assert "beta" not in ring._rings


def test_the_access_sampler_allows_its_rate_and_counts_the_rest() -> None:
    sampler = RateSampler(10)
    allowed = sum(sampler.allow(100.0) for _ in range(50))
    assert allowed == 10 and sampler.skipped == 40
    assert sampler.allow(100.5)  # half a second later: five more tokens
    assert not RateSampler(0).allow(0.0)
