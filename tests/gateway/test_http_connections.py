"""HTTP ingress connections: keep-alive, pipelining, 100-continue, closes, timeouts, limits.

Raw streams send what a well-behaved client never would (see httpkit.py);
``trio.fail_after`` only guards against hangs.
"""

from __future__ import annotations

import gc
import logging
import socket
import struct

import h11
import pytest
import trio
from httpkit import (
    GUARD_S,
    SETTINGS,
    FakeInvoker,
    RawClient,
    error_of,
    one_request,
    raw_request,
    start,
)

from huselet.config import TcpAddress
from huselet.gateway import HttpIngress
from huselet.gateway.connection import HEAD_RECEIVE_BYTES, Connection
from huselet.gateway.httpparse import RequestHead as ParsedHead

# --- connections --------------------------------------------------------------------------


async def test_keep_alive_serves_several_requests(nursery: trio.Nursery) -> None:
    address, invoker, _ = await start(nursery)
    client = await RawClient.connect(address)
    with trio.fail_after(GUARD_S):
        bodies = [b"one", b"two", b"three"]
        for body in bodies:
            resp = await client.request("POST", "/v1/invoke/echo", body=body)
            assert (resp.status, resp.body) == (200, body)
            assert "connection" not in resp.headers
        assert (await client.request("GET", "/healthz")).status == 200
    await client.aclose()
    assert [c.event for c in invoker.calls] == bodies


async def test_pipelined_requests_are_answered_in_order(nursery: trio.Nursery) -> None:
    address, _, _ = await start(nursery)
    client = await RawClient.connect(address)
    with trio.fail_after(GUARD_S):
        await client.send(
            raw_request("POST", "/v1/invoke/echo", body=b"first")
            + raw_request("GET", "/nowhere", body=b"ignored")
            + raw_request(
                "POST",
                "/v1/invoke/echo",
                "Transfer-Encoding: chunked",
                body=b"6\r\nsecond\r\n0\r\n\r\n",
            )
        )
        first, missing, second = [await client.response() for _ in range(3)]
    assert (first.status, first.body) == (200, b"first")
    assert missing.status == 404
    assert (second.status, second.body) == (200, b"second")
    await client.aclose()


async def test_a_pipelining_client_gets_only_a_few_heads_parsed_ahead(
    nursery: trio.Nursery,
) -> None:
    # Sixty ~600-byte requests in one write, the first of them held by its handler:
    # the connection has parsed at most one head read (HEAD_RECEIVE_BYTES) ahead; the
    # rest waits in the kernel, not as parsed objects. Every one is still answered.
    address, invoker, _ = await start(nursery)
    client = await RawClient.connect(address)
    pad = "X-Pad: " + "p" * 500
    one = raw_request("POST", "/v1/invoke/wait", pad, body=b"{}")
    with trio.fail_after(GUARD_S):
        await client.send(one * 60)
        await invoker.entered.wait()
        ours = client.stream.socket.getsockname()
        (conn,) = [
            o for o in gc.get_objects() if type(o) is Connection and _peer_of(o._stream) == ours
        ]
        queued = sum(type(e) is ParsedHead for e in conn._parser._events)
        assert queued <= HEAD_RECEIVE_BYTES // len(one) + 1, queued
        invoker.release.set()
        replies = [await client.response() for _ in range(60)]
    assert [r.status for r in replies] == [200] * 60
    await client.aclose()


def _peer_of(stream: trio.SocketStream) -> object:
    try:
        return stream.socket.getpeername()
    except OSError:
        return None  # a connection of an earlier test, closed


async def test_connection_close_is_honoured(nursery: trio.Nursery) -> None:
    address, _, _ = await start(nursery)
    client = await RawClient.connect(address)
    with trio.fail_after(GUARD_S):
        resp = await client.request("GET", "/healthz", "Connection: close")
        assert resp.status == 200
        assert resp.headers["connection"] == "close"
        assert await client.closed_by_server() == b""


async def test_http_1_0_is_served_and_closed(nursery: trio.Nursery) -> None:
    address, _, _ = await start(nursery)
    client = await RawClient.connect(address)
    with trio.fail_after(GUARD_S):
        await client.send(b"POST /v1/invoke/echo HTTP/1.0\r\nContent-Length: 4\r\n\r\nping")
        resp = await client.response()
        assert (resp.status, resp.body) == (200, b"ping")
        assert await client.closed_by_server() == b""


async def test_expect_100_continue(nursery: trio.Nursery) -> None:
    address, invoker, _ = await start(nursery)
    client = await RawClient.connect(address)
    with trio.fail_after(GUARD_S):
        client.parser.send(
            h11.Request(
                method="POST",
                target="/v1/invoke/echo",
                headers=[("Host", "t"), ("Content-Length", "5"), ("Expect", "100-continue")],
            )
        )
        await client.send(
            raw_request("POST", "/v1/invoke/echo", "Content-Length: 5", "Expect: 100-continue")
        )
        # The server must say "go on" before the body is sent.
        event = await client.next_event()
        assert isinstance(event, h11.InformationalResponse) and event.status_code == 100
        await client.send(b"hello")
        client.parser.send(h11.Data(data=b"hello"))
        client.parser.send(h11.EndOfMessage())
        resp = await client.rest_of_response()
        assert (resp.status, resp.body) == (200, b"hello")
    assert invoker.calls[0].event == b"hello"
    await client.aclose()


@pytest.mark.parametrize(
    ("path", "length", "status"),
    [
        ("/v1/invoke/echo", 4096, 413),  # too large: refused before the body
        # Refused before its body for another reason: whether the body will
        # follow is unknowable, so the connection cannot carry another request.
        ("/nowhere", 5, 404),
    ],
)
async def test_expect_100_continue_refused_early_closes(
    nursery: trio.Nursery, path: str, length: int, status: int
) -> None:
    address, invoker, _ = await start(nursery)
    client = await RawClient.connect(address)
    with trio.fail_after(GUARD_S):
        await client.send(
            raw_request("POST", path, f"Content-Length: {length}", "Expect: 100-continue")
        )
        resp = await client.response()
        assert resp.informational == []
        assert resp.status == status
        assert resp.headers["connection"] == "close"
        assert await client.closed_by_server() == b""
    assert invoker.calls == []


async def test_upgrade_is_not_switched_to_and_closes(nursery: trio.Nursery) -> None:
    address, _, _ = await start(nursery)
    client = await RawClient.connect(address)
    with trio.fail_after(GUARD_S):
        await client.send(
            raw_request("GET", "/healthz", "Connection: upgrade", "Upgrade: h2c")
            + raw_request("GET", "/healthz")  # never parsed: the client asked to switch
        )
        resp = await client.response()
        assert resp.status == 200
        assert resp.headers["connection"] == "close"
        assert await client.closed_by_server() == b""


async def test_garbage_does_not_hurt_the_server(nursery: trio.Nursery) -> None:
    address, _, _ = await start(nursery)
    client = await RawClient.connect(address)
    with trio.fail_after(GUARD_S):
        await client.send(b"\x00\x01\x02\xff garbage \x16\x03\x01\r\n\r\n")
        assert (await client.response()).status == 400
        await client.closed_by_server()
    assert (await one_request(address, "GET", "/healthz")).status == 200


async def test_half_sent_request_then_close(nursery: trio.Nursery) -> None:
    address, invoker, _ = await start(nursery)
    for partial in (
        b"POST /v1/invoke/ec",
        raw_request("POST", "/v1/invoke/echo", "Content-Length: 100") + b"abc",
    ):
        client = await RawClient.connect(address)
        await client.send(partial)
        await client.aclose()
    assert (await one_request(address, "GET", "/healthz")).status == 200
    assert invoker.calls == []


async def test_client_gone_before_the_reply(nursery: trio.Nursery) -> None:
    address, invoker, _ = await start(nursery)
    client = await RawClient.connect(address)
    with trio.fail_after(GUARD_S):
        await client.send(raw_request("POST", "/v1/invoke/wait", body=b"x"))
        await invoker.entered.wait()
        # RST instead of FIN, so the server's write fails outright.
        client.stream.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        await client.aclose()
        invoker.release.set()
        assert (await one_request(address, "POST", "/v1/invoke/echo", body=b"y")).body == b"y"


async def test_idle_connection_is_closed_quietly(nursery: trio.Nursery) -> None:
    # Long enough for the first request to go out right after connecting, even
    # on a loaded machine (a shorter one only makes the test quicker).
    address, _, _ = await start(nursery, idle_timeout_ms=2000)
    client = await RawClient.connect(address)
    assert (await client.request("GET", "/healthz")).status == 200
    # Nothing more is sent: the server closes, without a 408.
    assert await client.closed_by_server() == b""
    silent = await RawClient.connect(address)
    assert await silent.closed_by_server() == b""


async def test_slow_request_gets_408(nursery: trio.Nursery) -> None:
    address, _, _ = await start(nursery, read_timeout_ms=50)
    client = await RawClient.connect(address)
    await client.send(b"POST /v1/invoke/echo HTTP/1.1\r\nHost: t\r\n")
    with trio.fail_after(GUARD_S):
        resp = await client.response()
    assert resp.status == 408
    assert error_of(resp)["code"] == "request_timeout"
    assert await client.closed_by_server() == b""


async def test_a_handler_outlasting_every_timeout_is_answered(nursery: trio.Nursery) -> None:
    # The read and idle deadlines set before the handler ran are long past when it
    # answers: the connection's timer must not have cancelled the handler's wait.
    address, invoker, _ = await start(nursery, read_timeout_ms=50, idle_timeout_ms=200)
    client = await RawClient.connect(address)
    with trio.fail_after(GUARD_S):
        await client.send(raw_request("POST", "/v1/invoke/wait", body=b"x"))
        await invoker.entered.wait()
    await trio.sleep(0.5)  # the time under test passing, not a synchronisation
    invoker.release.set()
    with trio.fail_after(GUARD_S):
        resp = await client.response()
    assert (resp.status, resp.body) == (200, b"late")
    # The idle deadline still runs after the reply: the server closes, without a 408.
    assert await client.closed_by_server() == b""


async def test_max_connections_refuses_extra_connections(nursery: trio.Nursery) -> None:
    address, _, ingress = await start(nursery, max_connections=2)
    held = [await RawClient.connect(address) for _ in range(2)]
    with trio.fail_after(GUARD_S):
        for client in held:  # answered, so each holds a slot now
            assert (await client.request("GET", "/healthz")).status == 200
        assert ingress.open_connections == 2
        extra = await RawClient.connect(address)
        resp = await extra.request("GET", "/healthz")
        assert resp.status == 503
        assert error_of(resp)["code"] == "overloaded"
        assert resp.headers["retry-after"] == "1"
        assert await extra.closed_by_server() == b""
        # The held connections are unaffected.
        assert (await held[0].request("GET", "/healthz")).status == 200
        await held[1].aclose()
        while (await one_request(address, "GET", "/healthz")).status != 200:
            await trio.sleep(0.01)  # until the server has noticed the close
    await held[0].aclose()


async def test_cancel_closes_listener_and_connections() -> None:
    invoker = FakeInvoker()
    ingress = HttpIngress(SETTINGS, invoker)
    async with trio.open_nursery() as nursery:
        address = await nursery.start(ingress.run)
        client = await RawClient.connect(address)
        assert (await client.request("GET", "/healthz")).status == 200
        nursery.cancel_scope.cancel()
    assert ingress.bound_address is None
    assert await client.closed_by_server() == b""
    with pytest.raises(OSError):
        await trio.open_tcp_stream(address.host, address.port)


async def test_ipv6_loopback(nursery: trio.Nursery) -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6 support")
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback")
    address, _, _ = await start(nursery, http=TcpAddress("::1", 0))
    assert address.host == "::1" and address.port > 0
    resp = await one_request(address, "POST", "/v1/invoke/echo", body=b"v6")
    assert (resp.status, resp.body) == (200, b"v6")


async def test_protocol_warnings_are_rate_limited(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    address, _, _ = await start(nursery)
    with caplog.at_level(logging.DEBUG, logger="huselet.gateway"):
        for _ in range(25):
            client = await RawClient.connect(address)
            await client.send(b"\x00garbage\r\n\r\n")
            assert (await client.response()).status == 400
            await client.aclose()
    malformed = [r for r in caplog.records if r.getMessage() == "malformed request"]
    assert len(malformed) == 25
    assert len([r for r in malformed if r.levelno == logging.WARNING]) == 10


async def test_each_request_is_logged_at_debug(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    address, _, _ = await start(nursery)
    with caplog.at_level(logging.DEBUG, logger="huselet.gateway"):
        resp = await one_request(address, "POST", "/v1/invoke/full?a=1")
    lines = [getattr(r, "fields", {}) for r in caplog.records if r.getMessage() == "request"]
    assert len(lines) == 1
    fields = lines[0]
    assert (fields["method"], fields["path"], fields["status"]) == (
        "POST",
        "/v1/invoke/full?a=1",
        429,
    )
    assert fields["request_id"] == resp.request_id
    assert fields["ms"] >= 0


async def test_timeout_error_gets_a_fresh_request_id(nursery: trio.Nursery) -> None:
    # Room for the first request even on a loaded machine; the second stalls.
    address, _, _ = await start(nursery, read_timeout_ms=1000)
    client = await RawClient.connect(address)
    with trio.fail_after(GUARD_S):
        first = await client.request("GET", "/healthz", "X-Huselet-Request-Id: first-one")
        assert first.request_id == "first-one"
        await client.send(b"GET /healthz HTTP/1.1\r\n")  # the next request stalls
        late = await client.response()
    assert late.status == 408
    assert late.request_id != "first-one"
    await client.aclose()
