"""The admission core on its own, limits: tenant and function rates and concurrency,
source limits and CIDR lists, buckets across new keys and settings, and what a
throttled request is spared, on explicit clocks (no sockets). Authentication is in
test_admission.py."""

from __future__ import annotations

from pathlib import Path

import pytest
from admissionkit import ACME, GLOBEX, NOW, Clock, Fn, call, make, refused, request

from huselet.client.signing import AccessKey
from huselet.config import AuthSettings
from huselet.config.auth import RateLimit
from huselet.gateway.admission import Admission, AdmissionRequest, AuthMode
from huselet.tenants.keys import KeyRing
from huselet.tenants.limits import TokenBucket
from huselet.tenants.stats import RefusalReason


def test_tenant_rate_and_concurrency(ring: KeyRing) -> None:
    clock = Clock()
    adm = make(ring, clock)
    tickets = [adm.admit(request(ACME, "acme-fn", body=str(i).encode())) for i in range(2)]
    err = refused(adm, request(ACME, "acme-fn", body=b"3"))
    assert (err.reason, err.status, err.retry_after_s) == (RefusalReason.TENANT_RATE, 429, 1)
    assert err.pause_s == 0.25  # auth.throttle_delay_ms: the ingress holds the 429 back
    assert "tenant acme" in err.message and "tenant_rate" in err.message
    assert err.pace_key == "tenant:acme"  # its repeated 429s are paced per tenant
    # Another tenant is not affected.
    adm.admit(request(GLOBEX, "globex-fn")).release()
    clock.advance(1.0)
    tickets.append(adm.admit(request(ACME, "acme-fn", body=b"4", at=clock.wall)))
    for t in tickets:
        t.release()
    assert adm.snapshot()["tenants"]["acme"]["throttled"] == 1


def test_concurrency_cap_holds_until_release(ring: KeyRing) -> None:
    clock = Clock()
    fns = {"capped": Fn("globex", max_concurrent=2)}
    adm = Admission(
        AuthSettings(keys_file=Path("/unused")),
        functions=fns.get,
        clock=lambda: clock.mono,
        wall_clock=lambda: clock.wall,
    )
    adm.set_keys(ring)
    held = [adm.admit(request(GLOBEX, "capped", body=str(i).encode())) for i in range(2)]
    err = refused(adm, request(GLOBEX, "capped", body=b"x"))
    assert err.reason is RefusalReason.FUNCTION_CONCURRENCY and err.retry_after_s == 1
    held[0].release()
    adm.admit(request(GLOBEX, "capped", body=b"y"))


def test_buckets_survive_new_keys_and_settings(ring: KeyRing) -> None:
    clock = Clock()
    adm = make(ring, clock)
    for i in range(2):
        adm.admit(request(ACME, "acme-fn", body=str(i).encode())).release()
    adm.set_keys(ring)
    adm.configure(AuthSettings(keys_file=Path("/unused"), max_skew_s=60))
    assert refused(adm, request(ACME, "acme-fn", body=b"x")).reason is RefusalReason.TENANT_RATE
    assert refused(adm, request(GLOBEX, "globex-fn", at=NOW - 61)).reason is (
        RefusalReason.STALE_TIMESTAMP
    )


def test_function_rate_applies_to_all_callers(ring: KeyRing) -> None:
    clock = Clock()
    fns = {"f": Fn(None, RateLimit(1.0, 1.0))}
    adm = Admission(AuthSettings(), functions=fns.get, clock=lambda: clock.mono)
    assert adm.mode is AuthMode.OPEN
    adm.admit(AdmissionRequest(b"POST", b"/", b"", [], None, "1.2.3.4", "f")).release()
    err = refused(adm, AdmissionRequest(b"POST", b"/", b"", [], None, "5.6.7.8", "f"))
    assert err.reason is RefusalReason.FUNCTION_RATE


def test_open_mode_source_limits_and_cidrs() -> None:
    clock = Clock()
    settings = AuthSettings(
        source_rate=RateLimit(1.0, 2.0), deny_cidrs=("10.9.0.0/16",), allow_cidrs=("10.0.0.0/8",)
    )
    adm = Admission(settings, clock=lambda: clock.mono)

    def req(peer: str) -> AdmissionRequest:
        return AdmissionRequest(b"POST", b"/", b"", [], None, peer, "f")

    assert refused(adm, req("10.9.0.1")).reason is RefusalReason.SOURCE_DENIED
    assert refused(adm, req("192.168.1.1")).status == 403
    adm.admit(req("10.0.0.1"))
    adm.admit(req("10.0.0.1"))
    err = refused(adm, req("10.0.0.1"))
    assert err.reason is RefusalReason.SOURCE_RATE and err.retry_after_s == 1
    assert err.pace_key == "source:10.0.0.1"  # its repeated 429s are paced per source
    adm.admit(req("10.0.0.2"))  # per source


def test_failed_authentications_use_up_the_source_bucket(ring: KeyRing) -> None:
    clock = Clock()
    adm = make(ring, clock, source_rate=RateLimit(1.0, 2.0))
    wrong = AccessKey(ACME.key_id, "y" * 22)
    for i in range(2):
        bad = request(wrong, "acme-fn", body=str(i).encode())
        assert refused(adm, bad).reason is RefusalReason.BAD_SIGNATURE
    # Now even a good request from that address waits: checked before any crypto.
    assert refused(adm, request(ACME, "acme-fn")).reason is RefusalReason.SOURCE_RATE
    assert adm.admit(request(ACME, "acme-fn", peer="10.0.0.2")).tenant == "acme"


def test_a_throttled_tenant_is_refused_before_its_signature_is_checked(ring: KeyRing) -> None:
    clock = Clock()
    adm = make(ring, clock)
    for i in range(2):
        adm.admit(request(ACME, "acme-fn", body=str(i).encode())).release()
    # A wrong signature of a throttled tenant's key: 429, no HMAC spent on it.
    forged = request(AccessKey(ACME.key_id, "z" * 22), "acme-fn", body=b"x")
    assert refused(adm, forged).reason is RefusalReason.TENANT_RATE
    # A refused request was not recorded as used: once a token is back, it goes through.
    later = request(ACME, "acme-fn", body=b"y")
    assert refused(adm, later).reason is RefusalReason.TENANT_RATE
    clock.advance(1.0)
    assert adm.admit(later).tenant == "acme"


def test_a_signed_request_checks_its_tenants_quota_once(
    ring: KeyRing, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Checked before the HMAC (a throttled tenant costs none), then taken without
    # a second check: nothing is awaited in between, so the answer cannot change.
    clock = Clock()
    adm = make(ring, clock)
    checks: list[float] = []
    ready = TokenBucket.ready

    def counted(bucket: TokenBucket, now: float) -> bool:
        checks.append(now)
        return ready(bucket, now)

    monkeypatch.setattr(TokenBucket, "ready", counted)
    adm.admit(request(ACME, "acme-fn")).release()
    assert len(checks) == 1
    adm.admit_call(call(ACME, "acme-fn")).release()
    assert len(checks) == 2
    # And the one check still refuses: the bucket (burst 2) is empty now.
    assert refused(adm, request(ACME, "acme-fn", body=b"3")).reason is RefusalReason.TENANT_RATE
