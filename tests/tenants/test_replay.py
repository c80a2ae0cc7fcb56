"""The replay cache: per-second buckets of 64-bit digests, bounded in bytes (explicit clock)."""

from __future__ import annotations

import secrets

import pytest

from huselet.tenants.replay import (
    MIN_SLOTS,
    SLOT_BYTES,
    ReplayCache,
    ReplayCacheFull,
    TenantReplayCaches,
    digest_key,
)

WINDOW = 301.0  # max_skew_s = 300


def sig() -> bytes:
    return secrets.token_hex(32).encode()


def test_a_signature_is_seen_again_only_within_its_window() -> None:
    cache = ReplayCache(1 << 20, WINDOW)
    a = sig()
    assert not cache.seen(a, 1000, now=1000.2)
    assert cache.seen(a, 1000, now=1000.5)
    assert cache.seen(a, 1000, now=1300.9)  # still inside: max_skew_s after its second
    assert len(cache) == 1
    # Once its second has left the window the whole bucket goes (the request
    # would be refused as stale before the cache is asked).
    cache.purge(1301.0)
    assert len(cache) == 0 and cache.nbytes == 0
    assert not cache.seen(a, 1000, now=1301.0)


def test_many_signatures_in_one_second_all_stay_findable_as_their_table_grows() -> None:
    cache = ReplayCache(1 << 20, WINDOW)
    sigs = [sig() for _ in range(5000)]
    for s in sigs:
        assert not cache.seen(s, 7, now=7.0)
    assert all(cache.seen(s, 7, now=7.5) for s in sigs)
    assert len(cache) == 5000
    # At most half full: 16 to 32 bytes per signature.
    assert 16 * 5000 <= cache.nbytes <= 32 * 5000


def test_full_refuses_new_signatures_but_still_catches_replays() -> None:
    cache = ReplayCache(64 * SLOT_BYTES, WINDOW)
    recorded = []
    with pytest.raises(ReplayCacheFull):
        for _ in range(1000):
            s = sig()
            cache.seen(s, 50, now=50.0)
            recorded.append(s)
    assert cache.nbytes <= 64 * SLOT_BYTES
    # Full is never "forget": every recorded signature is still a replay.
    assert all(cache.seen(s, 50, now=60.0) for s in recorded)
    # A new second needs a table of its own: refused too while the bound is reached.
    with pytest.raises(ReplayCacheFull):
        cache.seen(sig(), 51, now=60.0)
    # When the full second leaves the window there is room again.
    assert not cache.seen(sig(), 400, now=400.0)


def test_a_sustained_rate_over_the_whole_window_fits_the_documented_size() -> None:
    # README: replay_cache_mb >= rate x (max_skew_s + 1) x 32 bytes.
    rate, window = 600, 101
    cache = ReplayCache(rate * window * 32, float(window))
    for second in range(3 * window):  # three windows: buckets come and go
        for _ in range(rate):
            assert not cache.seen(sig(), second, now=second + 0.5)
    assert cache.nbytes <= rate * window * 32
    assert len(cache) <= rate * (window + 1)


def test_a_wider_skew_after_a_reload_keeps_buckets_longer() -> None:
    caches = TenantReplayCaches(1 << 20, 11.0)
    a = sig()
    caches.seen("t", a, 100, now=100.0)
    caches.configure(1 << 20, 21.0)  # max_skew_s 10 -> 20
    assert caches.seen("t", a, 100, now=115.0)  # inside the new window: still a replay


def test_each_tenant_has_its_own_bound() -> None:
    caches = TenantReplayCaches(MIN_SLOTS * SLOT_BYTES, WINDOW)
    x, y = sig(), sig()
    for _ in range(MIN_SLOTS // 2):
        caches.seen("a", sig(), 10, now=10.0)
    with pytest.raises(ReplayCacheFull):  # tenant a's bound is reached ...
        caches.seen("a", x, 10, now=10.0)
    assert not caches.seen("b", y, 10, now=10.0)  # ... tenant b's is not
    assert caches.seen("b", y, 10, now=11.0)  # and still catches b's replays
    assert len(caches) == MIN_SLOTS // 2 + 1
    assert caches.nbytes == 2 * MIN_SLOTS * SLOT_BYTES
    # A tenant no longer named keeps its live signatures (no replay window reopens) ...
    caches.keep_only({"b"}, now=20.0)
    assert len(caches) == MIN_SLOTS // 2 + 1
    # ... and its cache goes once they have left the window.
    caches.keep_only({"b"}, now=10.0 + WINDOW)
    assert len(caches) == 1


def test_digest_keys_are_the_signatures_first_64_bits_and_never_zero() -> None:
    assert digest_key(b"00000000000000ff" + b"0" * 48) == 255
    assert digest_key(b"0" * 64) == 1  # 0 marks an empty slot
    assert digest_key(b"not hex at all!!") != 0  # total, whatever it is given
