"""The admission core on its own, authentication: signatures (headers and compact
form), keys and their validity, replay, bearer and open modes, framed calls, on explicit
clocks (no sockets: it is transport-free; the e2e tests cover it behind real HTTP).
Limits are in test_admission_limits.py."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import pytest
from admissionkit import ACME, GLOBEX, NOW, Clock, call, make, refused, request

from huselet.admin.render_tenants import render_admission
from huselet.client.signing import AccessKey
from huselet.config import AuthSettings
from huselet.config.auth import RateLimit
from huselet.gateway.admission import Admission, AdmissionRequest, AuthMode, CallRequest, Refusal
from huselet.tenants.keys import KeyRing, read_keys_file
from huselet.tenants.stats import RefusalReason


def test_signed_request_is_admitted_and_the_body_checked(ring: KeyRing) -> None:
    clock = Clock()
    adm = make(ring, clock)
    assert adm.mode is AuthMode.SIGNED
    ticket = adm.admit(request(ACME, "acme-fn", body=b'{"a":1}', target="/v1/invoke/acme-fn?x=1"))
    assert ticket.tenant == "acme"
    ticket.check_body(b'{"a":1}')
    with pytest.raises(Refusal) as info:
        ticket.check_body(b'{"a":2}')
    assert info.value.reason is RefusalReason.BODY_MISMATCH and info.value.status == 401
    ticket.release()
    ticket.release()  # idempotent
    assert adm.snapshot()["tenants"]["acme"]["in_flight"] == 0


def test_each_refusal_has_its_reason_and_status(ring: KeyRing) -> None:
    clock = Clock()
    adm = make(ring, clock)
    cases = [
        (request(ACME, "globex-fn"), RefusalReason.FORBIDDEN_FUNCTION, 403),
        (request(ACME, "nonexistent"), RefusalReason.FORBIDDEN_FUNCTION, 403),
        (request(AccessKey("HKNOPE01", ACME.secret), "acme-fn"), RefusalReason.UNKNOWN_KEY, 401),
        (request(AccessKey(ACME.key_id, "x" * 22), "acme-fn"), RefusalReason.BAD_SIGNATURE, 401),
        (request(ACME, "acme-fn", at=NOW - 301), RefusalReason.STALE_TIMESTAMP, 401),
        (request(ACME, "acme-fn", at=NOW + 301), RefusalReason.STALE_TIMESTAMP, 401),
    ]
    for req, reason, status in cases:
        err = refused(adm, req)
        assert (err.reason, err.status) == (reason, status), err.message
        assert err.pause_s == 0
        assert ACME.secret not in err.message
    assert adm.admit(request(ACME, "acme-fn", at=NOW - 299)).tenant == "acme"
    assert adm.admit(request(ACME, "shared-thing")).tenant == "acme"  # granted by prefix
    snap = adm.snapshot()
    assert snap["refusals"]["forbidden_function"] == {"acme": 2}
    assert snap["refusals"]["unknown_key"] == {"-": 1}


def test_tampering_with_any_signed_part_breaks_the_signature(ring: KeyRing) -> None:
    adm = make(ring, Clock())
    base = request(ACME, "acme-fn", target="/v1/invoke/acme-fn?a=1")
    for changed in (
        replace(base, method=b"PUT"),
        replace(base, query=b"a=2"),
        replace(base, path=b"/v1/invoke/acme-fn2", function="acme-fn"),
        replace(
            base,
            headers=[(n, b"text/plain" if n == b"content-type" else v) for n, v in base.headers],
        ),
        replace(base, headers=[(n, b"evil:1" if n == b"host" else v) for n, v in base.headers]),
    ):
        assert refused(adm, changed).reason is RefusalReason.BAD_SIGNATURE
    # Reordering the query is not tampering: it is canonicalised.
    reordered = request(ACME, "acme-fn", target="/v1/invoke/acme-fn?b=2&a=1")
    assert adm.admit(replace(reordered, query=b"a=1&b=2")).tenant == "acme"
    # Nor is whitespace around a header value: values are signed trimmed.
    padded = request(ACME, "acme-fn")
    spaced = [(n, b" %s\t" % v if n == b"host" else v) for n, v in padded.headers]
    assert adm.admit(replace(padded, headers=spaced)).tenant == "acme"


def test_replay_is_refused_within_the_window(ring: KeyRing) -> None:
    clock = Clock()
    adm = make(ring, clock)
    req = request(GLOBEX, "globex-fn")
    adm.admit(req).release()
    assert refused(adm, req).reason is RefusalReason.REPLAY
    # Later in the window too: it is found by its signed second, not by when it came.
    clock.advance(299)
    assert refused(adm, req).reason is RefusalReason.REPLAY
    clock.advance(101)  # past the window: now refused as stale, not forgotten as a replay
    assert refused(adm, req).reason is RefusalReason.STALE_TIMESTAMP


def test_malformed_requests(ring: KeyRing) -> None:
    adm = make(ring, Clock())
    good = request(ACME, "acme-fn")
    no_auth = replace(good, authorization=None)
    assert refused(adm, no_auth).reason is RefusalReason.MISSING_AUTH
    unsigned_type = request(ACME, "acme-fn")
    headers = [(n, v) for n, v in unsigned_type.headers if n != b"content-type"]
    auth = unsigned_type.authorization
    assert auth is not None
    dropped = auth.replace(b"content-type;", b"")
    err = refused(
        adm,
        replace(
            unsigned_type,
            authorization=dropped,
            headers=[*headers, (b"content-type", b"application/json")],
        ),
    )
    assert err.reason is RefusalReason.MALFORMED and "content-type" in err.message
    twice = replace(good, headers=[*good.headers, (b"host", b"other")])
    assert refused(adm, twice).reason is RefusalReason.MALFORMED
    missing = replace(good, headers=[(n, v) for n, v in good.headers if n != b"x-huselet-nonce"])
    assert "not in the request" in refused(adm, missing).message


def test_key_validity_window(ring: KeyRing) -> None:
    clock = Clock()
    clock.wall = 1_800_000_000 + 10**8  # after globex's key expired
    adm = make(ring, clock)
    err = refused(adm, request(GLOBEX, "globex-fn", at=clock.wall))
    assert err.reason is RefusalReason.KEY_NOT_VALID


def test_bearer_mode() -> None:
    adm = Admission(AuthSettings(), bearer_token=b"tok")
    assert adm.mode is AuthMode.BEARER

    def req(auth: bytes | None) -> AdmissionRequest:
        return AdmissionRequest(b"POST", b"/", b"", [], auth, "", "f")

    adm.admit(req(b"Bearer tok"))
    assert refused(adm, req(None)).reason is RefusalReason.MISSING_AUTH
    err = refused(adm, req(b"Bearer tol"))
    assert err.reason is RefusalReason.BAD_TOKEN and err.challenge == b'Bearer realm="huselet"'


def test_signed_framed_calls_get_the_same_refusals_as_http(ring: KeyRing) -> None:
    clock = Clock()
    adm = make(ring, clock)
    req = call(GLOBEX, "globex-fn")
    ticket = adm.admit_call(req)
    assert ticket.tenant == "globex"
    ticket.check_body(b"{}")
    with pytest.raises(Refusal) as info:
        ticket.check_body(b'{"x":1}')
    assert (info.value.reason, info.value.status) == (RefusalReason.BODY_MISMATCH, 401)
    ticket.release()
    assert refused(adm, req).reason is RefusalReason.REPLAY
    assert refused(adm, replace(req, auth=None)).reason is RefusalReason.MISSING_AUTH
    good = call(GLOBEX, "globex-fn", nonce="n2")
    assert good.auth is not None
    for changed in (
        replace(good, function="globex-fn2"),
        replace(good, kind="bytes"),
        replace(good, timeout_ms=501),
        replace(good, auth=replace(good.auth, nonce="n3")),
        replace(good, auth=replace(good.auth, body_sha256="0" * 64)),
        replace(good, auth=replace(good.auth, key_id=ACME.key_id)),
    ):
        assert refused(adm, changed).reason is RefusalReason.BAD_SIGNATURE, changed
    cases = [
        (call(ACME, "globex-fn"), RefusalReason.FORBIDDEN_FUNCTION, 403),
        (call(AccessKey("HKNOPE01", ACME.secret), "acme-fn"), RefusalReason.UNKNOWN_KEY, 401),
        (call(AccessKey(ACME.key_id, "w" * 22), "acme-fn"), RefusalReason.BAD_SIGNATURE, 401),
        (call(ACME, "acme-fn", at=NOW - 301), RefusalReason.STALE_TIMESTAMP, 401),
        (replace(good, auth=replace(good.auth, date="yesterday")), RefusalReason.MALFORMED, 401),
        (replace(good, auth=replace(good.auth, body_sha256="AB")), RefusalReason.MALFORMED, 401),
        (replace(good, auth=replace(good.auth, nonce="a b")), RefusalReason.MALFORMED, 401),
    ]
    for req, reason, status in cases:
        err = refused(adm, req)
        assert (err.reason, err.status) == (reason, status), err.message
        assert err.challenge == (b"HUSELET-HMAC-SHA256" if status == 401 else None)
    # The replay cache is shared with HTTP and the limits are the tenant's, on both ingresses.
    for i in range(2):
        adm.admit(request(ACME, "acme-fn", body=str(i).encode())).release()
    err = refused(adm, call(ACME, "acme-fn", nonce="n9"))
    assert (err.reason, err.retry_after_s) == (RefusalReason.TENANT_RATE, 1)


def test_framed_calls_in_open_and_bearer_modes() -> None:
    clock = Clock()
    settings = AuthSettings(source_rate=RateLimit(1.0, 1.0), deny_cidrs=("10.9.0.0/16",))
    adm = Admission(settings, clock=lambda: clock.mono)
    unsigned = CallRequest("f", "json", None, None, "10.0.0.1", True)
    adm.admit_call(unsigned).release()
    assert refused(adm, unsigned).reason is RefusalReason.SOURCE_RATE
    denied = replace(unsigned, peer="10.9.0.1")
    assert refused(adm, denied).reason is RefusalReason.SOURCE_DENIED
    local = replace(unsigned, peer="")  # the Unix socket: no address list applies
    adm.admit_call(local).release()
    bearer = Admission(AuthSettings(), bearer_token=b"tok")
    bearer.admit_call(unsigned).release()  # the HELLO carried the token
    err = refused(bearer, replace(unsigned, authenticated=False))
    assert (err.reason, err.status) == (RefusalReason.MISSING_AUTH, 401)


@pytest.mark.parametrize("length", [16, 64, 65, 200])
def test_secrets_of_any_length_verify_as_the_stdlib_hmac_signs(tmp_path: Path, length: int) -> None:
    # The verifier precomputes the HMAC's padded-key states (RFC 2104): keys up to
    # the block size are padded, longer ones hashed first, as hmac.new does.
    key = AccessKey("HKLONG01", "s" * length)
    path = tmp_path / "keys.toml"
    path.write_text(
        f'[[tenants]]\nname = "acme"\n[[tenants.keys]]\nid = "HKLONG01"\nsecret = "{key.secret}"\n'
    )
    os.chmod(path, 0o600)
    adm = make(read_keys_file(path), Clock())
    assert adm.admit(request(key, "acme-fn")).tenant == "acme"
    wrong = AccessKey(key.key_id, "s" * (length - 1) + "t")
    assert refused(adm, request(wrong, "acme-fn")).reason is RefusalReason.BAD_SIGNATURE


def test_the_compact_form_is_verified_like_the_headers_it_stands_for(ring: KeyRing) -> None:
    clock = Clock()
    adm = make(ring, clock)
    req = request(GLOBEX, "globex-fn", body=b'{"c":1}', compact=True)
    assert [name for name, _ in req.headers] == [b"host", b"content-type", b"authorization"]
    ticket = adm.admit(req)
    assert ticket.tenant == "globex"
    ticket.check_body(b'{"c":1}')
    ticket.release()
    assert refused(adm, req).reason is RefusalReason.REPLAY
    auth = request(GLOBEX, "globex-fn", body=b"{}", compact=True).authorization
    assert auth is not None
    base = replace(req, authorization=auth)
    # A parameter and the header it stands for, both: ambiguous, refused.
    doubled = replace(base, headers=[*base.headers, (b"x-huselet-date", b"20261130T045119Z")])
    assert refused(adm, doubled).reason is RefusalReason.MALFORMED
    # A parameter whose header is not signed.
    unsigned = auth.replace(b";x-huselet-nonce,", b",")
    assert refused(adm, replace(base, authorization=unsigned)).reason is RefusalReason.MALFORMED
    # Tampering with a parameter breaks the signature (or the body check after).
    nonce = auth.replace(b"Nonce=", b"Nonce=x")
    assert refused(adm, replace(base, authorization=nonce)).reason is RefusalReason.BAD_SIGNATURE
    digest = auth.partition(b"ContentSha256=")[2][:64]
    other = auth.replace(digest, b"0" * 64)
    assert refused(adm, replace(base, authorization=other)).reason is RefusalReason.BAD_SIGNATURE


def test_a_tenant_that_fills_its_replay_cache_refuses_only_its_own_requests(
    ring: KeyRing,
) -> None:
    clock = Clock()
    # 8 KiB: one second's table of 1024 slots, at most half full (512 signatures).
    adm = make(ring, clock, replay_cache_bytes=8192)
    admitted = []
    for i in range(512):  # every signature distinct, all inside the skew window
        req = request(GLOBEX, "globex-fn", body=b'{"i":%d}' % i)
        adm.admit(req).release()
        admitted.append(req)
    full = refused(adm, request(GLOBEX, "globex-fn", body=b'{"i":-1}'))
    assert full.reason is RefusalReason.REPLAY_CACHE_FULL and full.status == 503
    assert full.retry_after_s == 1 and "replay_cache_mb" in str(full)
    assert adm.snapshot()["refusals"]["replay_cache_full"] == {"globex": 1}
    # Full never means forgetting: a replay of any recorded request is still refused.
    for req in admitted[::37]:
        assert refused(adm, req).reason is RefusalReason.REPLAY
    # Another tenant's signed requests are not refused for it: its cache is its own.
    ticket = adm.admit(request(ACME, "acme-fn"))
    assert ticket.tenant == "acme"
    ticket.release()
    clock.advance(302)  # the window has passed: globex's signatures are forgotten
    fresh = request(GLOBEX, "globex-fn", at=clock.wall, body=b'{"i":-2}')
    adm.admit(fresh).release()


def test_each_tenants_replay_cache_is_shown_against_its_bound(ring: KeyRing) -> None:
    clock = Clock()
    adm = make(ring, clock, replay_cache_bytes=8192)
    for i in range(5):
        adm.admit(request(GLOBEX, "globex-fn", body=b'{"i":%d}' % i)).release()
    adm.admit(request(ACME, "acme-fn")).release()
    snap = adm.snapshot()
    # 5 signatures of one second: a table of 16 slots (at most half full), 8 bytes each.
    assert snap["tenants"]["globex"]["replay_cache"] == 5
    assert snap["tenants"]["globex"]["replay_cache_bytes"] == 16 * 8
    assert snap["tenants"]["acme"]["replay_cache_bytes"] == 8 * 8
    assert snap["replay_cache_bytes"] == 24 * 8 and snap["replay_cache_max_bytes"] == 8192
    table = render_admission(snap)
    assert "REPLAY KIB" in table.splitlines()[1]
    globex = next(line for line in table.splitlines() if line.startswith("globex"))
    assert globex.split()[-1] == "0.1"  # 128 bytes
