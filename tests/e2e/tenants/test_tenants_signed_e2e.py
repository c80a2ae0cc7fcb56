"""End to end, signed requests over HTTP: who may call what, and every 401."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from daemon_harness import Daemon, wait_until
from tenants_support import (
    ACME,
    ACME_FUTURE,
    ACME_NEW,
    GLOBEX,
    call,
    keys_toml,
    reason,
    signed,
    write_keys,
)

from huselet.client.signing import AccessKey, sign_request

pytestmark = pytest.mark.e2e


def test_a_tenant_invokes_its_function_with_a_signed_request(daemon: Daemon) -> None:
    r = call(daemon, ACME, "acme-echo", {"hello": "acme"})
    assert r.status_code == 200, r.text
    assert r.json()["event"] == {"hello": "acme"} and r.json()["function"] == "acme-echo"


def test_the_compact_signature_form_is_accepted_and_checked(daemon: Daemon) -> None:
    r = call(daemon, ACME_NEW, "acme-echo", {"form": "compact"}, compact=True)
    assert r.status_code == 200, r.text
    assert r.json()["event"] == {"form": "compact"}
    r = call(daemon, ACME_NEW, "acme-echo", body=b"{}", compact=True)
    assert r.status_code == 200
    target, headers, _ = signed(daemon, GLOBEX, "globex-echo", body=b"{}", compact=True)
    with daemon.client() as c:
        tampered = c.post(target, content=b'{"x": 1}', headers=headers)
    assert tampered.status_code == 401 and reason(tampered) == "body_mismatch"


def test_another_tenants_function_is_403_whether_or_not_it_exists(daemon: Daemon) -> None:
    r = call(daemon, ACME, "globex-echo")
    assert r.status_code == 403 and reason(r) == "forbidden_function", r.text
    assert "acme" in r.json()["error"]["message"]
    missing = call(daemon, ACME, "globex-secret-plans")
    assert missing.status_code == 403 and reason(missing) == "forbidden_function"
    # A grant by prefix reaches a function that does not exist: then it is a plain 404.
    granted = call(daemon, GLOBEX, "shared-thing")
    assert granted.status_code == 404, granted.text


def test_unsigned_request_is_401_with_a_challenge(daemon: Daemon) -> None:
    r = daemon.invoke("acme-echo", {})
    assert r.status_code == 401 and reason(r) == "missing_auth"
    assert r.headers["www-authenticate"] == "HUSELET-HMAC-SHA256"
    with daemon.client() as c:
        bearer = c.post("/v1/invoke/acme-echo", json={}, headers={"authorization": "Bearer x"})
    assert bearer.status_code == 401


def test_replayed_request_is_401(daemon: Daemon) -> None:
    target, headers, content = signed(daemon, ACME, "acme-echo", {"n": 1})
    with daemon.client() as c:
        first = c.post(target, content=content, headers=headers)
        again = c.post(target, content=content, headers=headers)
    assert first.status_code == 200, first.text
    assert again.status_code == 401 and reason(again) == "replay", again.text


def test_stale_timestamp_is_401_and_says_so(daemon: Daemon) -> None:
    r = call(daemon, ACME, "acme-echo", at=time.time() - 3600)
    assert r.status_code == 401 and reason(r) == "stale_timestamp"
    assert "skew" in r.json()["error"]["message"]
    future = call(daemon, ACME, "acme-echo", at=time.time() + 3600)
    assert future.status_code == 401 and reason(future) == "stale_timestamp"


def test_tampered_body_is_401(daemon: Daemon) -> None:
    target, headers, _ = signed(daemon, ACME, "acme-echo", {"amount": 1})
    with daemon.client() as c:
        r = c.post(target, content=b'{"amount": 1000}', headers=headers)
    assert r.status_code == 401 and reason(r) == "body_mismatch", r.text


def test_tampered_signed_header_is_401(daemon: Daemon) -> None:
    target, headers, content = signed(daemon, ACME, "acme-echo", {})
    headers["Content-Type"] = "application/octet-stream"
    with daemon.client() as c:
        r = c.post(target, content=content, headers=headers)
    assert r.status_code == 401 and reason(r) == "bad_signature"


def test_wrong_key_is_401_and_the_reply_reveals_no_secret(daemon: Daemon) -> None:
    unknown = call(daemon, AccessKey("HKNOSUCHKEY00001", ACME.secret), "acme-echo")
    assert unknown.status_code == 401 and reason(unknown) == "unknown_key"
    wrong_secret = AccessKey(ACME.key_id, ACME.secret[:-1] + "X")
    bad = call(daemon, wrong_secret, "acme-echo")
    assert bad.status_code == 401 and reason(bad) == "bad_signature"
    for r in (unknown, bad):
        assert ACME.secret[:8] not in r.text and "secret" not in r.text.lower()
    future = call(daemon, ACME_FUTURE, "acme-echo")
    assert future.status_code == 401 and reason(future) == "key_not_valid"


def test_rotation_with_two_overlapping_keys(daemon: Daemon, root: Path) -> None:
    assert call(daemon, ACME, "acme-echo").status_code == 200
    assert call(daemon, ACME_NEW, "acme-echo").status_code == 200
    try:
        # The operator retires the old key: the file is re-read on change.
        write_keys(root / "keys.toml", keys_toml(with_old_acme_key=False))
        assert wait_until(lambda: call(daemon, ACME, "acme-echo").status_code == 401, 30)
        assert call(daemon, ACME_NEW, "acme-echo").status_code == 200
        listed = daemon.ctl("keys", "--json")
        assert ACME.key_id not in listed.stdout and ACME_NEW.key_id in listed.stdout
    finally:
        write_keys(root / "keys.toml", keys_toml())
        assert wait_until(lambda: call(daemon, ACME, "acme-echo").status_code == 200, 30)


def test_http_functions_take_signed_requests_of_any_method_and_sub_path(daemon: Daemon) -> None:
    target = "/v1/invoke/acme-web/reports/7?b=2&a=1"
    headers = {"Host": daemon.url.removeprefix("http://")}
    headers.update(sign_request(ACME, "DELETE", target, headers, b""))
    with daemon.client() as c:
        r = c.delete(target, headers=headers)
        assert r.status_code == 200, r.text
        seen = r.json()
        assert seen["method"] == "DELETE" and seen["path"] == "/reports/7"
        assert seen["authorization"] is None  # the caller's credential is not the function's
        # Another method than the one signed: refused.
        headers = {"Host": daemon.url.removeprefix("http://")}
        headers.update(sign_request(ACME, "GET", target, headers, b""))
        assert c.put(target, headers=headers).status_code == 401
        other = {"Host": daemon.url.removeprefix("http://")}
        other.update(sign_request(GLOBEX, "GET", target, other, b""))
        assert c.get(target, headers=other).status_code == 403
