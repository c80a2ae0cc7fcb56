"""The verifier's per-caller memory (Authorization heads, framed-call prefixes, key
records) never lets a request through that the full check would refuse; and the
sampled verification CPU the daemon accounts (tenants.verify_cost)."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import pytest
from admissionkit import ACME, GLOBEX, KEYS, NOW, Clock, call, make, refused, request

from huselet.client.signing import AccessKey
from huselet.config import AuthSettings
from huselet.gateway.admission import Admission, AdmissionRequest
from huselet.tenants.keys import KeyRing, read_keys_file
from huselet.tenants.stats import RefusalReason
from huselet.tenants.verify_cost import SAMPLE_EVERY

# acme without its rate limit (1/s, burst 2): these tests send it more than that.
UNLIMITED = KEYS.replace("rate_per_s = 1\nburst = 2\n", "")
assert UNLIMITED != KEYS


def keys(tmp_path: Path, text: str) -> KeyRing:
    path = tmp_path / "keys.toml"
    path.write_text(text)
    os.chmod(path, 0o600)
    return read_keys_file(path)


def with_signature(req: AdmissionRequest, signature: bytes) -> AdmissionRequest:
    assert req.authorization is not None
    return replace(req, authorization=req.authorization[:-64] + signature)


def test_a_remembered_head_still_checks_every_signature(tmp_path: Path) -> None:
    adm = make(keys(tmp_path, UNLIMITED), Clock())
    first = request(ACME, "acme-fn", body=b"1")
    adm.admit(first).release()  # its head is remembered now
    second = request(ACME, "acme-fn", body=b"2")
    assert first.authorization is not None and second.authorization is not None
    assert first.authorization[:-64] == second.authorization[:-64]  # the same head
    sig = second.authorization[-64:]
    flipped = sig[:-1] + (b"0" if sig[-1:] != b"0" else b"1")
    for bad in (first.authorization[-64:], flipped, sig.upper(), sig[:-1] + b"g"):
        err = refused(adm, with_signature(second, bad))
        assert (err.reason, err.status) == (RefusalReason.BAD_SIGNATURE, 401), bad
    assert refused(adm, with_signature(second, sig[:-1])).status == 401  # too short
    # Another key's head with this key's signature: the head names the key.
    other = request(GLOBEX, "acme-fn", body=b"2")
    assert other.authorization is not None
    assert refused(adm, with_signature(other, sig)).reason is RefusalReason.BAD_SIGNATURE
    adm.admit(second).release()
    assert refused(adm, second).reason is RefusalReason.REPLAY


def test_a_new_key_ring_replaces_what_was_remembered(tmp_path: Path) -> None:
    clock = Clock()
    adm = make(keys(tmp_path, UNLIMITED), clock)
    adm.admit(request(ACME, "acme-fn", body=b"1")).release()
    adm.admit_call(call(ACME, "acme-fn")).release()
    # The same key id, a new secret (rotated in place); then the key removed.
    rotated = AccessKey(ACME.key_id, "rotated-secret-0123456789")
    adm.set_keys(keys(tmp_path, UNLIMITED.replace(ACME.secret, rotated.secret)))
    err = refused(adm, request(ACME, "acme-fn", body=b"2"))
    assert err.reason is RefusalReason.BAD_SIGNATURE
    assert refused(adm, call(ACME, "acme-fn", nonce="n2")).reason is RefusalReason.BAD_SIGNATURE
    adm.admit(request(rotated, "acme-fn", body=b"3")).release()
    adm.admit_call(call(rotated, "acme-fn", nonce="n3")).release()
    without_acme = KEYS[KEYS.index('[[tenants]]\nname = "globex"') :]
    assert ACME.key_id not in without_acme
    adm.set_keys(keys(tmp_path, without_acme))
    assert refused(adm, request(rotated, "acme-fn", body=b"4")).reason is RefusalReason.UNKNOWN_KEY
    err = refused(adm, call(rotated, "acme-fn", nonce="n4"))
    assert err.reason is RefusalReason.UNKNOWN_KEY


def test_a_keys_validity_window_is_half_open(tmp_path: Path) -> None:
    # not_before = NOW, expires = NOW + 1 h (2027-01-15T08:00:00Z .. 09:00:00Z).
    text = KEYS.replace(
        "expires = 2027-01-16T08:00:00Z",
        "not_before = 2027-01-15T08:00:00Z\nexpires = 2027-01-15T09:00:00Z",
    )
    clock = Clock()
    adm = make(keys(tmp_path, text), clock)
    for wall, ok in ((NOW - 1, False), (NOW, True), (NOW + 3599, True), (NOW + 3600, False)):
        clock.wall = wall
        req = request(GLOBEX, "globex-fn", at=wall)
        if ok:
            adm.admit(req).release()
        else:
            assert refused(adm, req).reason is RefusalReason.KEY_NOT_VALID, wall


def test_a_tenant_missing_from_the_ring_makes_its_keys_unknown(tmp_path: Path) -> None:
    ring = keys(tmp_path, KEYS)
    orphaned = KeyRing({"globex": ring.tenants["globex"]}, ring.keys)  # acme's key, no acme
    adm = make(ring, Clock())
    adm.set_keys(orphaned)
    assert refused(adm, request(ACME, "acme-fn")).reason is RefusalReason.UNKNOWN_KEY


def test_one_in_sample_every_verifications_is_timed_per_step(tmp_path: Path) -> None:
    adm = make(keys(tmp_path, KEYS), Clock())
    n = 2 * SAMPLE_EVERY
    for i in range(n):
        body = str(i).encode()
        if i % 2:
            ticket = adm.admit(request(GLOBEX, "globex-fn", body=body))
        else:
            ticket = adm.admit_call(call(GLOBEX, "globex-fn", nonce=f"n{i}"))
            body = b"{}"
        ticket.check_body(body)
        ticket.release()
    refused(adm, request(ACME, "globex-fn"))  # verified, then forbidden: still a verification
    cost = adm.snapshot()["verify_cost"]
    assert cost["sample_every"] == SAMPLE_EVERY
    assert cost["signature"]["requests"] == n + 1
    assert cost["signature"]["samples"] == 3  # the 1st, 17th and 33rd
    assert cost["body"] == {"requests": n, "samples": 2, "cpu_ns": cost["body"]["cpu_ns"]}
    assert cost["signature"]["cpu_ns"] > 0 and cost["body"]["cpu_ns"] > 0


def test_nothing_is_timed_without_signatures() -> None:
    adm = Admission(AuthSettings())
    for _ in range(SAMPLE_EVERY + 1):
        adm.admit(
            AdmissionRequest(b"POST", b"/v1/invoke/f", b"", [], None, "10.0.0.1", "f")
        ).check_body(b"{}")
    cost = adm.snapshot()["verify_cost"]
    assert cost["signature"]["requests"] == cost["body"]["requests"] == 0


@pytest.mark.parametrize("secret_length", [16, 64, 100])
def test_a_call_prefix_is_per_function_kind_timeout_and_key(
    tmp_path: Path, secret_length: int
) -> None:
    key = AccessKey("HKPREFIX", "p" * secret_length)
    text = f'[[tenants]]\nname = "acme"\n[[tenants.keys]]\nid = "{key.key_id}"\n'
    adm = make(keys(tmp_path, text + f'secret = "{key.secret}"\n'), Clock())
    adm.admit_call(call(key, "acme-fn")).release()  # remembers (acme-fn, json, 500, key)
    good = call(key, "acme-fn", nonce="n2")
    for changed in (
        replace(good, timeout_ms=None),
        replace(good, timeout_ms=5000),
        replace(good, kind="text"),
        replace(good, function="acme-fn2"),
    ):
        assert refused(adm, changed).reason is RefusalReason.BAD_SIGNATURE, changed
    adm.admit_call(good).release()
