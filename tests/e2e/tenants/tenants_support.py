"""What the tenants e2e tests share: keys, functions, and signed calls to a real daemon.

The daemon fixtures are in this folder's conftest.py; each test module gets
its own daemon (module scope).
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from typing import Any

import httpx
from daemon_harness import Daemon

from huselet.client.framed import FramedClient
from huselet.client.signing import AccessKey, sign_request
from protocol.ingress import Reply, Welcome
from protocol.ingress_client import ClientConnection
from protocol.ingress_signing import CallAuth

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


def framed_call(d: Daemon, key: AccessKey | None, function: str, event: Any = None) -> Reply:
    with FramedClient.connect(d.framed_address(), key=key) as client:
        return client.call(function, json.dumps(event or {}).encode(), "json")


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
