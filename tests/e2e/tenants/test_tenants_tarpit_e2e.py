"""End to end, the tarpit: a connection that keeps getting 429s gets them ever later,
then is closed; another tenant's requests meanwhile are answered as usual.

Raw streams, so the connection's own behaviour (holds, ``Connection: close``,
the close itself) is what is observed. This module's daemon holds a 429 for
``throttle_delay_ms = 20`` (doubling per 429 in a row, up to 16 times).
"""

from __future__ import annotations

import time

import pytest
import trio
from daemon_harness import Daemon
from load_support import _read_reply
from tenants_support import GLOBEX, SLOW, call, signed

from huselet.client.framed import FramedClient
from huselet.gateway.admission_throttle import CLOSE_AFTER, MAX_HOLD_FACTOR, PACE_PER_S

pytestmark = pytest.mark.e2e

AUTH_EXTRA = "throttle_delay_ms = 20\n"
DELAY_S = 0.020


def request_bytes(d: Daemon, i: int) -> bytes:
    target, headers, content = signed(d, SLOW, "slow-echo", {"i": i})
    lines = [f"POST {target} HTTP/1.1"] + [f"{k}: {v}" for k, v in headers.items()]
    lines.append(f"Content-Length: {len(content)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + content


async def test_consecutive_429s_are_held_ever_longer_then_the_connection_is_closed(
    daemon: Daemon,
) -> None:
    host, _, port = daemon.url.removeprefix("http://").rpartition(":")
    buf = bytearray()
    throttled: list[tuple[float, dict[str, str]]] = []
    async with await trio.open_tcp_stream(host, int(port)) as stream:
        for i in range(2 + CLOSE_AFTER):  # slow: burst 2, then one per 100 s
            started = trio.current_time()
            await stream.send_all(request_bytes(daemon, i))
            status, headers, _ = await _read_reply(stream, buf)
            took = trio.current_time() - started
            if i < 2:
                assert status == 200
                continue
            assert status == 429 and int(headers["retry-after"]) >= 1
            throttled.append((took, headers))
        # The last one said so, and the node then closed the connection.
        assert throttled[-1][1].get("connection") == "close"
        assert all(h.get("connection") != "close" for _, h in throttled[:-1])
        assert await stream.receive_some(65536) == b""
    # Each hold at least the delay doubled per 429 in a row (lower bounds only).
    for k, (took, _) in enumerate(throttled):
        assert took >= DELAY_S * min(MAX_HOLD_FACTOR, 2**k) - 0.001, (k, took)
    counters = daemon.status()["admission"]["tenants"]["slow"]
    assert counters["throttled"] >= CLOSE_AFTER


async def test_a_pipelining_flood_is_answered_slowly_while_another_tenant_is_served(
    daemon: Daemon,
) -> None:
    host, _, port = daemon.url.removeprefix("http://").rpartition(":")
    # Forty requests in one write, none waiting for a reply: the node reads and
    # answers them one at a time, each later than the last, and closes the
    # connection after CLOSE_AFTER 429s, leaving the rest unanswered.
    flood = b"".join(request_bytes(daemon, 100 + i) for i in range(40))
    async with await trio.open_tcp_stream(host, int(port)) as stream:
        await stream.send_all(flood)
        # Meanwhile another tenant is served as usual.
        other = await trio.to_thread.run_sync(call, daemon, GLOBEX, "globex-echo", {"x": 1})
        assert other.status_code == 200
        buf = bytearray()
        statuses = []
        while True:
            status, headers, _ = await _read_reply(stream, buf)
            statuses.append(status)
            if headers.get("connection") == "close":
                break
        assert await stream.receive_some(65536) == b""
    # (The first two may be admitted: slow's burst, if this test runs first.)
    assert statuses[-CLOSE_AFTER:] == [429] * CLOSE_AFTER and len(statuses) <= CLOSE_AFTER + 2


async def test_a_flood_over_many_connections_gets_its_repeated_429s_paced_node_wide(
    daemon: Daemon,
) -> None:
    # Eight connections, two pipelined requests each: every second request is a
    # repeat 429, due on its own 40-60 ms after the first one's answer, all at about
    # the same moment. Paced per tenant (PACE_PER_S), they go out 1/PACE_PER_S apart
    # (up to the cap: the longest hold, 16 x 20 ms, on top of their own), so some
    # are held far longer than their own hold. The node's own measure of each
    # request (Server-Timing total) is used: a loaded client reading late cannot
    # make it shorter.
    host, _, port = daemon.url.removeprefix("http://").rpartition(":")
    repeat_holds_s: list[float] = []

    async def connection(first: int) -> None:
        async with await trio.open_tcp_stream(host, int(port)) as stream:
            await stream.send_all(request_bytes(daemon, first) + request_bytes(daemon, first + 1))
            buf = bytearray()
            statuses = []
            for _ in range(2):
                status, headers, _ = await _read_reply(stream, buf)
                statuses.append(status)
            if statuses == [429, 429]:
                total = headers["server-timing"].rpartition("total;dur=")[2]
                repeat_holds_s.append(float(total) / 1000)

    async with trio.open_nursery() as nursery:
        for c in range(8):
            nursery.start_soon(connection, 200 + 10 * c)
    assert len(repeat_holds_s) >= 6  # (slow's burst of 2 may admit two of the sixteen)
    own_max_s = 2 * DELAY_S * 1.5  # the second hold in a row, with the most jitter
    assert max(repeat_holds_s) >= own_max_s + 1 / PACE_PER_S / 2, repeat_holds_s


def test_framed_throttled_calls_in_a_row_are_held_ever_longer(daemon: Daemon) -> None:
    timed = []
    with FramedClient.connect(daemon.framed_address(), key=SLOW) as client:
        for i in range(7):  # slow: burst 2 (if not spent yet), then one per 100 s
            started = time.monotonic()
            reply = client.call("slow-echo", b'{"i": %d}' % i, "json")
            timed.append((reply.status, time.monotonic() - started))
    held = [took for status, took in timed if status == 429]
    assert len(held) >= 5, timed
    for k, took in enumerate(held):
        assert took >= DELAY_S * min(MAX_HOLD_FACTOR, 2**k) - 0.001, (k, took)
