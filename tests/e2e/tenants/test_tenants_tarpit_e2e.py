"""End to end, the tarpit: a connection that keeps getting 429s gets them ever later,
then is closed; another tenant's requests meanwhile are answered as usual.

Raw sockets, so the connection's own behaviour (holds, ``Connection: close``,
the close itself) is what is observed. This module's daemon holds a 429 for
``throttle_delay_ms = 20`` (doubling per 429 in a row, up to 16 times).
"""

from __future__ import annotations

import socket
import time

import pytest
from daemon_harness import Daemon
from tenants_support import GLOBEX, SLOW, call, signed

from huselet.gateway.admission_throttle import CLOSE_AFTER, MAX_HOLD_FACTOR

pytestmark = pytest.mark.e2e

AUTH_EXTRA = "throttle_delay_ms = 20\n"
DELAY_S = 0.020


def request_bytes(d: Daemon, i: int) -> bytes:
    target, headers, content = signed(d, SLOW, "slow-echo", {"i": i})
    lines = [f"POST {target} HTTP/1.1"] + [f"{k}: {v}" for k, v in headers.items()]
    lines.append(f"Content-Length: {len(content)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + content


def read_reply(sock: socket.socket, buf: bytearray) -> tuple[int, dict[str, str]]:
    """One reply's status and headers (lower-case names); its body is consumed."""
    while b"\r\n\r\n" not in buf:
        data = sock.recv(65536)
        assert data, "the node closed the connection before replying"
        buf += data
    end = buf.index(b"\r\n\r\n")
    lines = bytes(buf[:end]).decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    total = end + 4 + int(headers.get("content-length", "0"))
    while len(buf) < total:
        data = sock.recv(65536)
        assert data, "the node closed the connection mid-reply"
        buf += data
    del buf[:total]
    return int(lines[0].split()[1]), headers


def test_consecutive_429s_are_held_ever_longer_then_the_connection_is_closed(
    daemon: Daemon,
) -> None:
    host, _, port = daemon.url.removeprefix("http://").rpartition(":")
    buf = bytearray()
    throttled: list[tuple[float, dict[str, str]]] = []
    with socket.create_connection((host, int(port)), timeout=60) as sock:
        for i in range(2 + CLOSE_AFTER):  # slow: burst 2, then one per 100 s
            started = time.monotonic()
            sock.sendall(request_bytes(daemon, i))
            status, headers = read_reply(sock, buf)
            took = time.monotonic() - started
            if i < 2:
                assert status == 200
                continue
            assert status == 429 and int(headers["retry-after"]) >= 1
            throttled.append((took, headers))
        # The last one said so, and the node then closed the connection.
        assert throttled[-1][1].get("connection") == "close"
        assert all(h.get("connection") != "close" for _, h in throttled[:-1])
        assert sock.recv(65536) == b""
    # Each hold at least the delay doubled per 429 in a row (lower bounds only).
    for k, (took, _) in enumerate(throttled):
        assert took >= DELAY_S * min(MAX_HOLD_FACTOR, 2**k) - 0.001, (k, took)
    counters = daemon.status()["admission"]["tenants"]["slow"]
    assert counters["throttled"] >= CLOSE_AFTER


def test_a_pipelining_flood_is_answered_slowly_while_another_tenant_is_served(
    daemon: Daemon,
) -> None:
    host, _, port = daemon.url.removeprefix("http://").rpartition(":")
    # Forty requests in one write, none waiting for a reply: the node reads and
    # answers them one at a time, each later than the last, and closes the
    # connection after CLOSE_AFTER 429s, leaving the rest unanswered.
    flood = b"".join(request_bytes(daemon, 100 + i) for i in range(40))
    with socket.create_connection((host, int(port)), timeout=60) as sock:
        sock.sendall(flood)
        # Meanwhile another tenant is served as usual.
        assert call(daemon, GLOBEX, "globex-echo", {"during": "flood"}).status_code == 200
        buf = bytearray()
        statuses = []
        while True:
            status, headers = read_reply(sock, buf)
            statuses.append(status)
            if headers.get("connection") == "close":
                break
        assert sock.recv(65536) == b""
    # (The first two may be admitted: slow's burst, if this test runs first.)
    assert statuses[-CLOSE_AFTER:] == [429] * CLOSE_AFTER and len(statuses) <= CLOSE_AFTER + 2
