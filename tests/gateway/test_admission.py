"""The admission core on its own: every refusal, limits, reload behaviour, on explicit
clocks (no sockets: it is transport-free; the e2e tests cover it behind real HTTP)."""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from huselet.admin.render_tenants import render_admission
from huselet.client.signing import AccessKey, format_timestamp, sign_request
from huselet.config import AuthSettings
from huselet.config.auth import RateLimit
from huselet.gateway.admission import (
    Admission,
    AdmissionRequest,
    AuthMode,
    CallRequest,
    Refusal,
)
from huselet.tenants.keys import KeyRing, read_keys_file
from huselet.tenants.limits import TokenBucket
from huselet.tenants.stats import RefusalReason
from protocol.ingress_signing import sign_call

NOW = 1_800_000_000.0
ACME = AccessKey("HKACME01", "acme-secret-0123456789")
GLOBEX = AccessKey("HKGLOBEX", "globex-secret-0123456789")
KEYS = f"""
[[tenants]]
name = "acme"
functions = ["shared-*"]
rate_per_s = 1
burst = 2
max_concurrent = 5
[[tenants.keys]]
id = "{ACME.key_id}"
secret = "{ACME.secret}"
[[tenants]]
name = "globex"
[[tenants.keys]]
id = "{GLOBEX.key_id}"
secret = "{GLOBEX.secret}"
expires = 2027-01-16T08:00:00Z
"""


@dataclass
class Fn:
    tenant: str | None = None
    rate: RateLimit | None = None
    max_concurrent: int | None = None


class Clock:
    def __init__(self) -> None:
        self.mono = 100.0
        self.wall = NOW

    def advance(self, s: float) -> None:
        self.mono += s
        self.wall += s


@pytest.fixture
def ring(tmp_path: Path) -> KeyRing:
    path = tmp_path / "keys.toml"
    path.write_text(KEYS)
    os.chmod(path, 0o600)
    return read_keys_file(path)


FUNCTIONS = {"acme-fn": Fn("acme"), "globex-fn": Fn("globex"), "open-fn": Fn()}


def make(ring: KeyRing, clock: Clock, **settings: object) -> Admission:
    adm = Admission(
        AuthSettings(keys_file=Path("/unused"), **settings),  # type: ignore[arg-type]
        functions=FUNCTIONS.get,
        clock=lambda: clock.mono,
        wall_clock=lambda: clock.wall,
    )
    adm.set_keys(ring)
    return adm


def request(
    key: AccessKey,
    function: str,
    *,
    at: float = NOW,
    body: bytes = b"{}",
    peer: str = "10.0.0.1",
    target: str | None = None,
    compact: bool = False,
) -> AdmissionRequest:
    target = target or f"/v1/invoke/{function}"
    headers = {"Host": "node:8470", "Content-Type": "application/json"}
    signed = sign_request(key, "POST", target, headers, body, at=at, compact=compact)
    raw = [(k.lower().encode(), v.encode()) for k, v in {**headers, **signed}.items()]
    path, _, query = target.encode().partition(b"?")
    return AdmissionRequest(
        b"POST", path, query, raw, signed["authorization"].encode(), peer, function
    )


def refused(adm: Admission, req: AdmissionRequest | CallRequest) -> Refusal:
    with pytest.raises(Refusal) as info:
        adm.admit(req) if isinstance(req, AdmissionRequest) else adm.admit_call(req)
    return info.value


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


def test_bearer_mode() -> None:
    adm = Admission(AuthSettings(), bearer_token=b"tok")
    assert adm.mode is AuthMode.BEARER

    def req(auth: bytes | None) -> AdmissionRequest:
        return AdmissionRequest(b"POST", b"/", b"", [], auth, "", "f")

    adm.admit(req(b"Bearer tok"))
    assert refused(adm, req(None)).reason is RefusalReason.MISSING_AUTH
    err = refused(adm, req(b"Bearer tol"))
    assert err.reason is RefusalReason.BAD_TOKEN and err.challenge == b'Bearer realm="huselet"'


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


def call(key: AccessKey, fn: str, *, at: float = NOW, nonce: str = "n1") -> CallRequest:
    """A framed call of ``fn`` with the event ``{}`` and a 500 ms timeout, signed by ``key``."""
    date = format_timestamp(at)
    auth = sign_call(key.key_id, key.secret, fn, b"{}", "json", 500, date=date, nonce=nonce)
    return CallRequest(fn, "json", 500, auth, "10.0.0.1", True)


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
