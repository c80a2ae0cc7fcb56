"""End to end, the replay cache: a replay is refused for as long as its timestamp is
in the window, and a tenant whose cache is full is refused 503, never let through.

This module's daemon has a tiny cache (``replay_cache_mb = 0.01``: at most 512
signatures of one second per tenant).
"""

from __future__ import annotations

import time

import pytest
from daemon_harness import Daemon, wait_until
from tenants_support import ACME, ACME_NEW, GLOBEX, call, reason, signed

pytestmark = pytest.mark.e2e

AUTH_EXTRA = "replay_cache_mb = 0.01\n"


def test_a_replay_is_refused_whenever_it_comes_within_the_window(daemon: Daemon) -> None:
    # Signed 30 s ago (inside the 300 s skew): recorded under that second, not under
    # the second it arrived in, and found there again.
    target, headers, content = signed(daemon, GLOBEX, "globex-echo", {"n": 1}, at=time.time() - 30)
    with daemon.client() as c:
        assert c.post(target, content=content, headers=headers).status_code == 200
        again = c.post(target, content=content, headers=headers)
    assert again.status_code == 401 and reason(again) == "replay", again.text
    # Signed now, replayed after the node's clock has moved on by a few seconds.
    at = time.time()
    target, headers, content = signed(daemon, GLOBEX, "globex-echo", {"n": 2}, at=at)
    with daemon.client() as c:
        assert c.post(target, content=content, headers=headers).status_code == 200
        assert wait_until(lambda: time.time() > at + 2.5, 30)
        later = c.post(target, content=content, headers=headers)
    assert later.status_code == 401 and reason(later) == "replay", later.text


def test_a_full_cache_refuses_its_tenant_503_and_still_catches_replays(daemon: Daemon) -> None:
    at = time.time()  # one signed second: one table, which may grow to 1024 slots
    admitted: list[tuple[str, dict[str, str], bytes]] = []
    full = None
    with daemon.client() as c:
        for i in range(700):
            target, headers, content = signed(daemon, ACME, "acme-echo", {"i": i}, at=at)
            r = c.post(target, content=content, headers=headers)
            if r.status_code == 200:
                admitted.append((target, headers, content))
                continue
            full = r
            break
        assert full is not None, "700 signatures of one second fitted in 0.01 MB"
        assert full.status_code == 503 and reason(full) == "replay_cache_full", full.text
        assert full.headers["retry-after"] == "1"
        assert "replay_cache_mb" in full.json()["error"]["message"]
        assert 100 < len(admitted) <= 512
        # Full never means forgetting: every recorded request is still a replay.
        for target, headers, content in admitted[:: len(admitted) // 10]:
            r = c.post(target, content=content, headers=headers)
            assert r.status_code == 401 and reason(r) == "replay", r.text
    # Only that tenant is refused (and ACME's other key is the same tenant).
    assert call(daemon, GLOBEX, "globex-echo").status_code == 200
    same_tenant = call(daemon, ACME_NEW, "acme-echo", at=at)
    assert same_tenant.status_code == 503 and reason(same_tenant) == "replay_cache_full"
    admission = daemon.status()["admission"]
    assert admission["refusals"]["replay_cache_full"]["acme"] >= 2
    assert admission["replay_cache_bytes"] <= int(0.01 * (1 << 20))
    assert admission["replay_cache"] >= len(admitted)
