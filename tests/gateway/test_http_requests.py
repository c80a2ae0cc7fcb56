"""HTTP ingress: healthz, request validation, body limits and auth.

What is refused before the invoker is asked, and with which status.
"""

from __future__ import annotations

import pytest
import trio
from httpkit import (
    GUARD_S,
    SETTINGS,
    FakeInvoker,
    RawClient,
    assert_common_headers,
    error_of,
    one_request,
    raw_request,
    start,
)

from huselet.gateway import HttpIngress

# --- healthz ------------------------------------------------------------------------------


async def test_healthz_ok_and_draining(nursery: trio.Nursery) -> None:
    address, invoker, _ = await start(nursery)
    resp = await one_request(address, "GET", "/healthz")
    assert (resp.status, resp.json()) == (200, {"status": "ok"})
    assert_common_headers(resp)
    invoker.draining = True
    resp = await one_request(address, "GET", "/healthz")
    assert (resp.status, resp.json()) == (503, {"status": "draining"})
    assert_common_headers(resp)


async def test_head_healthz_has_no_body(nursery: trio.Nursery) -> None:
    address, _, _ = await start(nursery)
    client = await RawClient.connect(address)
    with trio.fail_after(GUARD_S):
        resp = await client.request("HEAD", "/healthz")
        assert resp.status == 200
        assert resp.body == b""
        assert resp.headers["content-length"] == str(len(b'{"status":"ok"}'))
        again = await client.request("GET", "/healthz")  # framing intact after HEAD
        assert again.json() == {"status": "ok"}
    await client.aclose()


async def test_draining_refuses_invocations(nursery: trio.Nursery) -> None:
    address, invoker, _ = await start(nursery, FakeInvoker(draining=True))
    client = await RawClient.connect(address)
    with trio.fail_after(GUARD_S):
        resp = await client.request("POST", "/v1/invoke/echo", body=b"x")
        assert resp.status == 503
        assert error_of(resp)["code"] == "draining"
        assert resp.headers["retry-after"] == "1"
        # A draining node sends clients elsewhere: it does not keep the connection.
        assert resp.headers["connection"] == "close"
        assert await client.closed_by_server() == b""
    assert invoker.calls == []


# --- request validation -------------------------------------------------------------------


async def test_timeout_header_is_passed_on(nursery: trio.Nursery) -> None:
    address, invoker, _ = await start(nursery)
    resp = await one_request(address, "POST", "/v1/invoke/echo", "X-Huselet-Timeout-Ms: 250")
    assert resp.status == 200
    assert invoker.calls[0].timeout_ms == 250
    await one_request(address, "POST", "/v1/invoke/echo")
    assert invoker.calls[1].timeout_ms is None


@pytest.mark.parametrize("value", ["0", "-5", "abc", "1.5", "+7", "1" * 13, "١٢"])
async def test_bad_timeout_header_is_400(nursery: trio.Nursery, value: str) -> None:
    address, invoker, _ = await start(nursery)
    client = await RawClient.connect(address)
    with trio.fail_after(GUARD_S):
        await client.send(
            raw_request("POST", "/v1/invoke/echo", body=b"abc").replace(
                b"Host: test", b"Host: test\r\nX-Huselet-Timeout-Ms: " + value.encode()
            )
        )
        resp = await client.response()
        assert resp.status == 400
        assert error_of(resp)["code"] == "bad_request"
        # The unread body was dropped; the connection still works.
        assert (await client.request("GET", "/healthz")).status == 200
    await client.aclose()
    assert invoker.calls == []


async def test_repeated_timeout_header_is_400(nursery: trio.Nursery) -> None:
    address, invoker, _ = await start(nursery)
    resp = await one_request(
        address, "POST", "/v1/invoke/echo", "X-Huselet-Timeout-Ms: 5", "X-Huselet-Timeout-Ms: 50000"
    )
    assert resp.status == 400
    assert invoker.calls == []


async def test_malformed_request_line_is_400_then_close(nursery: trio.Nursery) -> None:
    address, _, _ = await start(nursery)
    client = await RawClient.connect(address)
    with trio.fail_after(GUARD_S):
        await client.send(b"THIS IS NOT HTTP\r\n\r\n")
        resp = await client.response()
        assert resp.status == 400
        assert error_of(resp)["code"] == "bad_request"
        assert resp.headers["connection"] == "close"
        assert_common_headers(resp)
        assert await client.closed_by_server() == b""


async def test_content_length_with_chunked_is_400_then_close(nursery: trio.Nursery) -> None:
    address, invoker, _ = await start(nursery)
    client = await RawClient.connect(address)
    with trio.fail_after(GUARD_S):
        await client.send(
            raw_request(
                "POST",
                "/v1/invoke/echo",
                "Content-Length: 4",
                "Transfer-Encoding: chunked",
                body=b"0\r\n\r\nGET /healthz HTTP/1.1\r\nHost: t\r\n\r\n",
            )
        )
        resp = await client.response()
        assert resp.status == 400
        assert resp.headers["connection"] == "close"
        # The smuggled second request is never answered.
        assert await client.closed_by_server() == b""
    assert invoker.calls == []


async def test_missing_host_is_400(nursery: trio.Nursery) -> None:
    address, _, _ = await start(nursery)
    client = await RawClient.connect(address)
    with trio.fail_after(GUARD_S):
        await client.send(b"GET /healthz HTTP/1.1\r\n\r\n")
        assert (await client.response()).status == 400
    await client.aclose()


@pytest.mark.parametrize("complete", [True, False])
async def test_oversized_head_is_431_then_close(nursery: trio.Nursery, complete: bool) -> None:
    address, _, _ = await start(nursery)
    client = await RawClient.connect(address)
    head = raw_request("GET", "/healthz", "X-Big: " + "a" * 17_000)
    with trio.fail_after(GUARD_S):
        if complete:  # all of it at once
            await client.send(head)
        else:  # in pieces, never finished
            for i in range(0, 30_000, 1000):
                await client.send(head[:-4][i : i + 1000])
        resp = await client.response()
        assert resp.status == 431
        assert await client.closed_by_server() == b""


# --- body limits -----------------------------------------------------------------------------


async def test_content_length_over_limit_is_413_without_reading(nursery: trio.Nursery) -> None:
    address, invoker, _ = await start(nursery)
    client = await RawClient.connect(address)
    with trio.fail_after(GUARD_S):
        # Only the head is sent: a server waiting for the body would hang here.
        await client.send(raw_request("POST", "/v1/invoke/echo", "Content-Length: 5000"))
        resp = await client.response()
        assert resp.status == 413
        assert error_of(resp)["code"] == "payload_too_large"
        assert resp.headers["connection"] == "close"
        assert await client.closed_by_server() == b""
    assert invoker.calls == []


async def test_chunked_body_over_limit_is_413(nursery: trio.Nursery) -> None:
    address, invoker, _ = await start(nursery)
    client = await RawClient.connect(address)
    chunk = b"a" * 600
    with trio.fail_after(GUARD_S):
        await client.send(raw_request("POST", "/v1/invoke/echo", "Transfer-Encoding: chunked"))
        await client.send(b"258\r\n" + chunk + b"\r\n" + b"258\r\n" + chunk + b"\r\n")
        resp = await client.response()
        assert resp.status == 413
        assert resp.headers["connection"] == "close"
        assert await client.closed_by_server() == b""
    assert invoker.calls == []


async def test_body_at_the_limit_is_accepted(nursery: trio.Nursery) -> None:
    address, invoker, _ = await start(nursery)
    resp = await one_request(address, "POST", "/v1/invoke/echo", body=b"z" * 1024)
    assert resp.status == 200
    assert len(invoker.calls[0].event) == 1024


# --- auth ---------------------------------------------------------------------------------


async def test_bearer_token_is_required_when_set(nursery: trio.Nursery) -> None:
    address, invoker, _ = await start(nursery, auth_token="s3cret-token")
    missing = await one_request(address, "POST", "/v1/invoke/echo")
    wrong = await one_request(address, "POST", "/v1/invoke/echo", "Authorization: Bearer nope")
    basic = await one_request(
        address, "POST", "/v1/invoke/echo", "Authorization: Basic s3cret-token"
    )
    for resp in (missing, wrong, basic):
        assert resp.status == 401
        assert error_of(resp)["code"] == "unauthorized"
        assert resp.headers["www-authenticate"].startswith("Bearer")
    assert invoker.calls == []
    ok = await one_request(address, "POST", "/v1/invoke/echo", "Authorization: Bearer s3cret-token")
    assert ok.status == 200
    # healthz needs no token
    assert (await one_request(address, "GET", "/healthz")).status == 200


async def test_no_token_configured_means_no_auth(nursery: trio.Nursery) -> None:
    address, _, _ = await start(nursery)
    resp = await one_request(address, "POST", "/v1/invoke/echo", "Authorization: Bearer whatever")
    assert resp.status == 200


def test_empty_auth_token_is_refused() -> None:
    with pytest.raises(ValueError):
        HttpIngress(SETTINGS, FakeInvoker(), auth_token="  ")
