"""End to end: tenants against the real daemon, real HTTP, real ``huselet`` CLI.

Signed requests are made with :mod:`huselet.client.signing` (the module callers
use); refusals are checked by status and by the ``reason`` the reply names.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from daemon_harness import HUSELET, Daemon, wait_until, write_config
from support import write_package

from huselet.client.framed import FramedClient
from huselet.client.framed_trio import open_framed_client
from huselet.client.signing import AccessKey, format_timestamp, sign_request
from protocol.ingress import ClientConnection, Reply, Welcome
from protocol.ingress_signing import CallAuth, sign_call

pytestmark = pytest.mark.e2e

ACME = AccessKey("HKACMEOLD0000001", "acme-old-secret-0123456789abcdef")
ACME_NEW = AccessKey("HKACMENEW0000002", "acme-new-secret-0123456789abcdef")
ACME_FUTURE = AccessKey("HKACMEFUTURE0003", "acme-future-secret-0123456789abc")
GLOBEX = AccessKey("HKGLOBEX00000001", "globex-secret-0123456789abcdef01")
SLOW = AccessKey("HKSLOWTENANT0001", "slow-secret-0123456789abcdef0123")

FUNCTIONS = """
[[functions]]
name = "acme-echo"
package = "pkgs/echo"
handler = "main:handler"
tenant = "acme"

[[functions]]
name = "globex-echo"
package = "pkgs/echo"
handler = "main:handler"
tenant = "globex"
max_instances = 2

[[functions]]
name = "slow-echo"
package = "pkgs/echo"
handler = "main:handler"
tenant = "slow"

[[functions]]
name = "acme-web"
package = "pkgs/echo"
handler = "main:web"
events = "http"
tenant = "acme"
"""

ECHO = """
import json, os
def handler(event, context):
    return {"event": event, "function": context.function_name, "uid": os.getuid()}

def web(event, context):
    seen = {
        "method": event["requestContext"]["http"]["method"],
        "path": event["rawPath"],
        "query": event["rawQueryString"],
        "authorization": event["headers"].get("authorization"),
    }
    return {"statusCode": 200, "body": json.dumps(seen)}
"""


def keys_toml(*, with_old_acme_key: bool = True) -> str:
    old = f"""
[[tenants.keys]]
id = "{ACME.key_id}"
secret = "{ACME.secret}"
not_before = 2020-01-01T00:00:00Z
expires = 2099-01-01T00:00:00Z
"""
    return f"""
[[tenants]]
name = "acme"
{old if with_old_acme_key else ""}
[[tenants.keys]]
id = "{ACME_NEW.key_id}"
secret = "{ACME_NEW.secret}"
not_before = 2021-01-01T00:00:00Z

[[tenants.keys]]
id = "{ACME_FUTURE.key_id}"
secret = "{ACME_FUTURE.secret}"
not_before = 2098-01-01T00:00:00Z

[[tenants]]
name = "globex"
functions = ["shared-*"]

[[tenants.keys]]
id = "{GLOBEX.key_id}"
secret = "{GLOBEX.secret}"

[[tenants]]
name = "slow"
rate_per_s = 0.01
burst = 2

[[tenants.keys]]
id = "{SLOW.key_id}"
secret = "{SLOW.secret}"
"""


def write_keys(path: Path, text: str) -> None:
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)  # a new inode: the poller sees the change whatever the mtime


@pytest.fixture(scope="module")
def root() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="hlt"))
    write_package(path, "echo", ECHO)
    write_keys(path / "keys.toml", keys_toml())
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def daemon(root: Path) -> Iterator[Daemon]:
    config = write_config(root, FUNCTIONS)
    text = config.read_text().replace(
        "[gateway]",
        f'[auth]\nkeys_file = "{root}/keys.toml"\nkeys_poll_ms = 100\n[gateway]\n'
        f'framed = "127.0.0.1:0"\nframed_socket = "{root}/run/framed.sock"',
    )
    config.write_text(text)
    with Daemon(config) as d:
        yield d


def signed(
    d: Daemon,
    key: AccessKey,
    function: str,
    event: Any = None,
    *,
    body: bytes | None = None,
    at: float | None = None,
    compact: bool = False,
) -> tuple[str, dict[str, str], bytes]:
    """(target, headers, body) of a request signed by ``key``."""
    target = f"/v1/invoke/{function}"
    content = body if body is not None else json.dumps(event or {}).encode()
    headers = {"Host": d.url.removeprefix("http://"), "Content-Type": "application/json"}
    headers.update(sign_request(key, "POST", target, headers, content, at=at, compact=compact))
    return target, headers, content


def call(d: Daemon, key: AccessKey, function: str, event: Any = None, **kw: Any) -> httpx.Response:
    target, headers, content = signed(d, key, function, event, **kw)
    with d.client() as c:
        return c.post(target, content=content, headers=headers)


def reason(r: httpx.Response) -> str:
    return str(r.json()["error"].get("reason"))


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


def test_a_throttled_tenant_gets_429_while_another_is_unaffected(daemon: Daemon) -> None:
    # slow: burst 2, then one request per 100 s.
    codes = [call(daemon, SLOW, "slow-echo").status_code for _ in range(2)]
    assert codes == [200, 200]
    results: dict[str, list[int]] = {"slow": [], "globex": []}
    stop = threading.Event()

    def flood() -> None:
        with daemon.client() as c:
            while not stop.is_set():
                target, headers, content = signed(daemon, SLOW, "slow-echo", {})
                r = c.post(target, content=content, headers=headers)
                results["slow"].append(r.status_code)

    thread = threading.Thread(target=flood)
    thread.start()
    try:
        with daemon.client() as c:
            for i in range(30):
                target, headers, content = signed(daemon, GLOBEX, "globex-echo", {"i": i})
                results["globex"].append(
                    c.post(target, content=content, headers=headers).status_code
                )
    finally:
        stop.set()
        thread.join(30)
    assert results["globex"] == [200] * 30
    assert results["slow"] and set(results["slow"]) == {429}
    r = call(daemon, SLOW, "slow-echo")
    assert r.status_code == 429 and reason(r) == "tenant_rate"
    assert int(r.headers["retry-after"]) >= 1
    assert "tenant slow" in r.json()["error"]["message"]
    # Buckets are node-wide and survive a reload.
    assert daemon.ctl("reload").returncode == 0
    assert call(daemon, SLOW, "slow-echo").status_code == 429
    status = daemon.status()["admission"]
    assert status["tenants"]["slow"]["throttled"] >= len(results["slow"])
    assert status["refusals"]["tenant_rate"]["slow"] >= 1
    assert status["tenants"]["globex"]["admitted"] >= 30


def test_ctl_keys_lists_ids_tenants_and_expiry_never_secrets(daemon: Daemon) -> None:
    out = daemon.ctl("keys")
    assert out.returncode == 0, out.stderr
    for key in (ACME, ACME_NEW, GLOBEX):
        assert key.key_id in out.stdout and key.secret not in out.stdout
    assert "2099-01-01T00:00:00Z" in out.stdout and "pending" in out.stdout
    data = json.loads(daemon.ctl("keys", "--json").stdout)
    assert "secret" not in json.dumps(data)
    text = daemon.ctl("status").stdout
    assert "admission: mode signed" in text and "globex" in text
    assert call(daemon, ACME, "globex-echo").status_code == 403
    metrics = daemon.ctl("metrics").stdout
    assert 'huselet_admission_refusals_total{reason="forbidden_function",tenant="acme"}' in metrics
    assert 'huselet_tenant_requests_total{tenant="globex"}' in metrics


def test_cli_invoke_signs_with_a_key_file_or_the_environment(daemon: Daemon, root: Path) -> None:
    key_file = root / "acme.json"
    fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({"key_id": ACME_NEW.key_id, "secret": ACME_NEW.secret}, f)
    base = [*HUSELET, "invoke", "acme-echo", "--url", daemon.url, "--data", '{"via": "cli"}']
    out = subprocess.run(
        [*base, "--key-file", str(key_file)], capture_output=True, text=True, timeout=30
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["event"] == {"via": "cli"}
    env = {
        **os.environ,
        "HUSELET_ACCESS_KEY_ID": GLOBEX.key_id,
        "HUSELET_SECRET_ACCESS_KEY": GLOBEX.secret,
    }
    denied = subprocess.run(base, capture_output=True, text=True, timeout=30, env=env)
    assert denied.returncode == 1 and "HTTP 403" in denied.stderr


def test_tenants_sharing_the_process_runtime_are_warned_about(daemon: Daemon) -> None:
    warned = [e for e in daemon.logs() if "does not isolate them" in str(e.get("msg"))]
    assert warned and warned[0]["functions"] == [
        "acme-echo",
        "acme-web",
        "globex-echo",
        "slow-echo",
    ]


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


def test_open_node_limits_sources_and_applies_cidr_lists_on_reload() -> None:
    root = Path(tempfile.mkdtemp(prefix="hlt"))
    try:
        write_package(root, "echo", ECHO)
        config = write_config(root, FUNCTIONS_OPEN)
        auth = "[auth]\nsource_rate_per_s = 0.01\nsource_burst = 2\n"
        config.write_text(config.read_text().replace("[gateway]", auth + "[gateway]"))
        with Daemon(config) as d:
            codes = [d.invoke("echo", {}).status_code for _ in range(3)]
            assert codes == [200, 200, 429]
            r = d.invoke("echo", {})
            assert reason(r) == "source_rate" and int(r.headers["retry-after"]) >= 1
            denied = auth + 'deny_cidrs = ["127.0.0.0/8", "::1"]\n'
            config.write_text(config.read_text().replace(auth, denied))
            assert d.ctl("reload").returncode == 0
            r = d.invoke("echo", {})
            assert r.status_code == 403 and reason(r) == "source_denied"
            with d.client() as c:
                assert c.get("/healthz").status_code == 200  # probes stay open
            refusals = d.status()["admission"]["refusals"]
            assert refusals["source_rate"]["-"] >= 2 and refusals["source_denied"]["-"] == 1
    finally:
        shutil.rmtree(root, ignore_errors=True)


FUNCTIONS_OPEN = """
[[functions]]
name = "echo"
package = "pkgs/echo"
handler = "main:handler"
"""


# --- the framed ingress: the same keys, signatures, replay cache and limits ----------------


def framed_call(d: Daemon, key: AccessKey | None, function: str, event: Any = None) -> Reply:
    with FramedClient.connect(d.framed_address(), key=key) as client:
        return client.call(function, json.dumps(event or {}).encode(), "json")


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


def raw_call(d: Daemon, auth: CallAuth, event: bytes) -> Reply:
    """One call with exactly this ``auth`` (what huselet's clients never send twice)."""
    host, _, port = d.framed_address().rpartition(":")
    conn = ClientConnection()
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(conn.hello())
        while True:
            message = conn.next_event()
            if message is None:
                data = sock.recv(65536)
                assert data, "the node closed the connection"
                conn.receive_data(data)
            elif isinstance(message, Welcome):
                sock.sendall(conn.call("acme-echo", event, "json", auth=auth)[1])
            else:
                assert isinstance(message, Reply), message
                return message


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
