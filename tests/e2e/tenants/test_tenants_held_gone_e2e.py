"""End to end: a held (tarpitted) connection whose client has gone admits nothing more.

A pipelining client queues many requests of a tenant over its rate, reads up
to its first 429 and closes. The node is then holding the next 429; what the
client queued behind it is still in the kernel (and the parser). The node must
close the connection when that hold ends instead of admitting (or holding
again) the next queued request for nobody: ``node.http_connections.held_client_gone``
counts it, and the tenant's admission counters stop where the client left.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
from daemon_harness import Daemon
from load_support import _read_reply
from support import eventually, write_package
from tenants_support import ECHO, keys_toml, signed, write_keys

from huselet.client.signing import AccessKey

pytestmark = pytest.mark.e2e

# Long enough holds that the client's FIN is in before the node looks at the next request.
AUTH_EXTRA = "throttle_delay_ms = 200\n"
DRIP = AccessKey("HKDRIPTENANT0001", "drip-secret-0123456789abcdef01234")
DRIP_TENANT = f"""
[[tenants]]
keys = [{{ id = "{DRIP.key_id}", secret = "{DRIP.secret}" }}]
name = "drip"
rate_per_s = 0.4
burst = 1
functions = ["acme-echo"]
"""


@pytest.fixture(scope="module")
def root() -> Iterator[Path]:
    """This folder's root, with tenant ``drip`` (its own limit: no other test spends it)."""
    path = Path(tempfile.mkdtemp(prefix="hlt"))
    write_package(path, "echo", ECHO)
    write_keys(path / "keys.toml", keys_toml() + DRIP_TENANT)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def request_bytes(d: Daemon, i: int) -> bytes:
    target, headers, content = signed(d, DRIP, "acme-echo", {"i": i})
    lines = [f"POST {target} HTTP/1.1"] + [f"{k}: {v}" for k, v in headers.items()]
    lines.append(f"Content-Length: {len(content)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + content


def drip_decided(status: dict[str, Any]) -> int:
    """Requests of tenant drip that reached a decision (admitted or throttled)."""
    row = status["admission"]["tenants"].get("drip", {})
    return int(row.get("admitted", 0)) + int(row.get("throttled", 0))


async def test_a_held_connection_whose_client_left_admits_nothing_more(daemon: Daemon) -> None:
    host, _, port = daemon.url.removeprefix("http://").rpartition(":")
    before = await trio.to_thread.run_sync(daemon.status)
    gone_before = before["node"]["http_connections"]["held_client_gone"]
    decided_before = drip_decided(before)
    flood = b"".join(request_bytes(daemon, i) for i in range(30))
    statuses = []
    async with await trio.open_tcp_stream(host, int(port)) as stream:
        await stream.send_all(flood)
        buf = bytearray()
        while not statuses or statuses[-1] != 429:
            status, _, _ = await _read_reply(stream, buf)
            statuses.append(status)
    # Gone. By then the node had decided the requests it answered and perhaps
    # the next one (decided as it wrote that 429, unless it had to read more
    # first): that one is held, or runs if the bucket refilled. No further one.
    assert statuses[:-1] == [200] * (len(statuses) - 1), statuses

    def closed() -> bool:
        node = daemon.status()["node"]["http_connections"]
        return node["open"] == 0

    await eventually(closed, timeout=60, interval=0.2)
    after = await trio.to_thread.run_sync(daemon.status)
    assert drip_decided(after) - decided_before <= len(statuses) + 1, (statuses, after)
    assert after["node"]["http_connections"]["held_client_gone"] == gone_before + 1
