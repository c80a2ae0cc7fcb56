"""End to end, the framed ingress: the same keys, signatures, replay cache and limits as HTTP."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import trio
from daemon_harness import Daemon
from tenants_support import (
    ACME_NEW,
    GLOBEX,
    SLOW,
    framed_call,
    raw_call,
)

from huselet.client.framed import FramedClient
from huselet.client.framed_trio import open_framed_client
from huselet.client.signing import AccessKey, format_timestamp
from protocol.ingress_signing import CallAuth, sign_call

pytestmark = pytest.mark.e2e


def test_framed_a_tenant_calls_its_function_signed_over_tcp_and_the_socket(
    daemon: Daemon, root: Path
) -> None:
    r = framed_call(daemon, ACME_NEW, "acme-echo", {"via": "tcp"})
    assert r.status == 200, r
    assert json.loads(r.body)["event"] == {"via": "tcp"}

    async def over_the_socket() -> list[int]:
        async with open_framed_client(root / "run" / "framed.sock", key=GLOBEX) as client:
            replies = [await client.call("globex-echo", b'{"n": 1}', "json") for _ in range(3)]
        return [reply.status for reply in replies]

    assert trio.run(over_the_socket) == [200, 200, 200]


def test_framed_refusals_match_http(daemon: Daemon) -> None:
    r = framed_call(daemon, GLOBEX, "acme-echo")
    assert (r.status, r.error_code, r.error_reason) == (403, "forbidden", "forbidden_function")
    r = framed_call(daemon, None, "acme-echo")
    assert (r.status, r.error_reason) == (401, "missing_auth")
    wrong = AccessKey(ACME_NEW.key_id, "not-the-secret-0123456789abcdef0")
    r = framed_call(daemon, wrong, "acme-echo")
    assert (r.status, r.error_reason) == (401, "bad_signature")
    assert wrong.secret not in (r.error_message or "") and ACME_NEW.secret not in str(r)
    r = framed_call(daemon, AccessKey("HKNOSUCHKEY00001", ACME_NEW.secret), "acme-echo")
    assert (r.status, r.error_reason) == (401, "unknown_key")


def test_framed_replay_stale_and_tampered_calls_are_401(daemon: Daemon) -> None:
    event = b'{"pay": 1}'

    def signed(at: float, nonce: str, body: bytes = event) -> CallAuth:
        return sign_call(
            ACME_NEW.key_id,
            ACME_NEW.secret,
            "acme-echo",
            body,
            "json",
            None,
            date=format_timestamp(at),
            nonce=nonce,
        )

    auth = signed(time.time(), "replay-1")
    assert raw_call(daemon, auth, event).status == 200
    again = raw_call(daemon, auth, event)  # another connection: the cache is node-wide
    assert (again.status, again.error_reason) == (401, "replay")
    stale = raw_call(daemon, signed(time.time() - 3600, "stale-1"), event)
    assert (stale.status, stale.error_reason) == (401, "stale_timestamp")
    assert "skew" in (stale.error_message or "")
    tampered = raw_call(daemon, signed(time.time(), "tamper-1"), b'{"pay": 1000}')
    assert (tampered.status, tampered.error_reason) == (401, "body_mismatch")


def test_framed_throttled_tenant_gets_429_with_retry_after(daemon: Daemon) -> None:
    # slow: burst 2, then one call per 100 s, whichever ingress its calls came by.
    timed = []
    with FramedClient.connect(daemon.framed_address(), key=SLOW) as client:
        for _ in range(3):
            started = time.monotonic()
            reply = client.call("slow-echo", b"{}", "json")
            timed.append((reply, time.monotonic() - started))
    throttled = [(r, took) for r, took in timed if r.status == 429]
    assert throttled, [r.status for r, _ in timed]
    r, took = throttled[0]
    # Held back auth.throttle_delay_ms (250 ms), as over HTTP: a lower bound only.
    assert took >= 0.25
    assert (r.error_code, r.error_reason) == ("rate_limited", "tenant_rate")
    assert r.retry_after_s is not None and r.retry_after_s >= 1
    assert daemon.status()["admission"]["refusals"]["tenant_rate"]["slow"] >= 1


def test_framed_a_gateway_forwards_a_call_its_caller_signed(daemon: Daemon) -> None:
    """``auth=`` sends a call signed elsewhere as is: the gateway holds no secret."""
    event = b'{"fwd": 1}'

    def signed_by_caller(fn: str, nonce: str) -> CallAuth:
        return sign_call(
            ACME_NEW.key_id,
            ACME_NEW.secret,
            fn,
            event,
            "json",
            None,
            date=format_timestamp(time.time()),
            nonce=nonce,
        )

    with FramedClient.connect(daemon.framed_address()) as gateway:  # no key of its own
        ok = gateway.call("acme-echo", event, "json", auth=signed_by_caller("acme-echo", "fwd-1"))
        # Forwarded to another function than the caller signed for: not the call it signed.
        moved = gateway.call(
            "globex-echo", event, "json", auth=signed_by_caller("acme-echo", "fwd-2")
        )
    assert ok.status == 200, ok
    assert json.loads(ok.body)["event"] == {"fwd": 1}
    assert (moved.status, moved.error_reason) == (401, "bad_signature")
