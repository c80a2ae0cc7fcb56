"""What the admission tests share: keys, functions, a clock, requests and calls to admit.

Transport-free, like the admission core. Shared by tests/gateway/test_admission.py
and test_admission_limits.py; their ``ring`` fixture (these keys, read from a file)
is in this folder's conftest.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from huselet.client.signing import AccessKey, format_timestamp, sign_request
from huselet.config import AuthSettings
from huselet.config.auth import RateLimit
from huselet.gateway.admission import Admission, AdmissionRequest, CallRequest, Refusal
from huselet.tenants.keys import KeyRing
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


def call(key: AccessKey, fn: str, *, at: float = NOW, nonce: str = "n1") -> CallRequest:
    """A framed call of ``fn`` with the event ``{}`` and a 500 ms timeout, signed by ``key``."""
    date = format_timestamp(at)
    auth = sign_call(key.key_id, key.secret, fn, b"{}", "json", 500, date=date, nonce=nonce)
    return CallRequest(fn, "json", 500, auth, "10.0.0.1", True)
