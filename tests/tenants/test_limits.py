"""Token buckets, source buckets and CIDR lists, on an explicit clock."""

from __future__ import annotations

import pytest

from huselet.tenants.keys import RateLimit
from huselet.tenants.limits import (
    SourceBuckets,
    TokenBucket,
    retry_after,
)
from huselet.tenants.sources import SourcePolicy, parse_networks, source_key
from huselet.tenants.stats import AdmissionStats, RateMeter, RefusalReason


def test_bucket_burst_then_rate() -> None:
    bucket = TokenBucket(RateLimit(2.0, 3.0), now=0.0)
    for _ in range(3):
        assert bucket.ready(0.0)
        bucket.take(0.0)
    assert not bucket.ready(0.0)
    assert bucket.wait_s(0.0) == pytest.approx(0.5)
    assert not bucket.ready(0.49) and bucket.ready(0.5)
    assert bucket.level(100.0) == 3.0  # never beyond the burst


def test_retune_keeps_what_the_bucket_holds() -> None:
    bucket = TokenBucket(RateLimit(1.0, 10.0), now=0.0)
    for _ in range(10):
        bucket.take(0.0)
    bucket.retune(RateLimit(1.0, 20.0), now=0.0)
    assert not bucket.ready(0.0)  # a reload is no way to refill
    bucket.retune(RateLimit(100.0, 2.0), now=0.0)
    assert bucket.ready(0.01)


def test_retry_after_is_whole_seconds_at_least_one() -> None:
    assert retry_after(0.0) == 1 and retry_after(1.2) == 2 and retry_after(100.0) == 100


def test_source_buckets_are_bounded() -> None:
    buckets = SourceBuckets(RateLimit(1.0, 1.0), capacity=2)
    first = buckets.get("10.0.0.1", 0.0)
    first.take(0.0)
    buckets.get("10.0.0.2", 0.0)
    buckets.get("10.0.0.3", 0.0)
    assert len(buckets) == 2
    assert buckets.get("10.0.0.1", 0.0).ready(0.0)  # forgotten (least recently used)


def test_an_ipv6_64_is_one_source_and_a_mapped_ipv4_its_address() -> None:
    assert source_key("2001:db8::1") == source_key("2001:db8::ffff:7") == "2001:db8::/64"
    assert source_key("2001:db8:0:1::1") != source_key("2001:db8::1")
    assert source_key("::ffff:10.0.0.1") == source_key("10.0.0.1") == "10.0.0.1"
    assert source_key("fe80::1%eth0") == "fe80::/64"
    assert source_key("") == "" and source_key("garbage:x") == "garbage:x"
    buckets = SourceBuckets(RateLimit(1.0, 1.0), capacity=8)
    buckets.get("2001:db8::1", 0.0).take(0.0)
    # Another address of the same /64 finds the bucket spent: one host, one rate.
    assert not buckets.get("2001:db8::2", 0.0).ready(0.0)
    assert buckets.get("2001:db8:0:1::2", 0.0).ready(0.0)


def test_source_policy() -> None:
    policy = SourcePolicy(parse_networks(["10.0.0.0/8", "::1"]), parse_networks(["10.9.0.0/16"]))
    assert policy.allows("10.1.2.3") and policy.allows("::ffff:10.1.2.3")
    assert not policy.allows("10.9.1.1") and not policy.allows("192.168.0.1")
    assert policy.allows("::1") and not policy.allows("") and not policy.allows("garbage")
    assert SourcePolicy((), ()).allows("")
    with pytest.raises(ValueError, match="not an IP"):
        parse_networks(["10.0.0.0/33"])


def test_stats_count_by_reason_and_tenant() -> None:
    stats = AdmissionStats()
    stats.admitted("a", 0.0)
    stats.refused(RefusalReason.TENANT_RATE, "a", 0.0)
    stats.refused(RefusalReason.UNKNOWN_KEY, None, 0.0)
    snap = stats.snapshot(1.0)
    assert snap["refusals"] == {"tenant_rate": {"a": 1}, "unknown_key": {"-": 1}}
    assert snap["tenants"]["a"]["admitted"] == 1 and snap["tenants"]["a"]["throttled"] == 1


def test_rate_meter() -> None:
    meter = RateMeter(0.0)
    for i in range(50):
        meter.add(i * 0.1)  # 10/s for 5 s
    assert meter.rate(5.0) == pytest.approx(10.0, rel=0.05)
    assert meter.rate(100.0) == 0.0
