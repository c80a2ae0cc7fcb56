"""Tests of the HTTP ingress over real TCP connections.

The ingress runs in the test's nursery on 127.0.0.1:0 in front of a small
in-test invoker. Clients are raw trio streams carrying hand-written HTTP bytes
(so malformed, pipelined and half-sent requests can be expressed exactly); the
replies are parsed by h11 in client mode. ``trio.fail_after`` only guards
against hangs: a server that never answers or never closes fails the test.
"""

from __future__ import annotations

import json
import logging
import socket
import struct
from dataclasses import dataclass, field, replace
from typing import Any

import h11
import pytest
import trio

from huselet.config import GatewaySettings, TcpAddress
from huselet.dispatch.invocation import InvokeResult
from huselet.errors import (
    DeadlineExceeded,
    HandlerError,
    HuseletError,
    InstanceLost,
    QueueFull,
    Unavailable,
    UnknownFunction,
)
from huselet.gateway import HttpIngress
from protocol.link import HttpRequest

GUARD_S = 10  # hang guard, not a timing assertion
SETTINGS = GatewaySettings(http=TcpAddress("127.0.0.1", 0), max_body_bytes=1024)
SECRET_PATH = "/srv/huselet/secret/module.py"


# --- the invoker ----------------------------------------------------------------------


@dataclass
class Call:
    function: str
    event: bytes
    kind: str
    timeout_ms: int | None
    request_id: str | None


@dataclass
class FakeInvoker:
    """Behaves according to the function name; records every call."""

    draining: bool = False
    calls: list[Call] = field(default_factory=list)
    release: trio.Event = field(default_factory=trio.Event)
    entered: trio.Event = field(default_factory=trio.Event)
    http: list[HttpRequest | None] = field(default_factory=list)

    def takes_http(self, function: str) -> bool:
        return function.startswith("web")

    async def invoke(
        self,
        function: str,
        event: bytes,
        kind: str,
        *,
        timeout_ms: int | None = None,
        request_id: str | None = None,
        http: HttpRequest | None = None,
        meta: Any = None,
    ) -> InvokeResult:
        self.calls.append(Call(function, event, kind, timeout_ms, request_id))
        if function == "web":
            self.http.append(http)
            return InvokeResult(
                event, "application/octet-stream", 201, (("x-seen", "1"), ("server", "evil"))
            )
        if function == "echo":
            ctype = "application/json" if kind == "json" else "application/octet-stream"
            return InvokeResult(event, ctype)
        if function == "wait":
            self.entered.set()
            await self.release.wait()
            return InvokeResult(b"late", "text/plain")
        if function == "full":
            raise QueueFull("the queue of full is full", retry_after_s=2)
        if function == "boom":
            raise HandlerError("ValueError", "bad input")
        if function == "lost":
            raise InstanceLost("the instance died")
        if function == "unavailable":
            raise Unavailable("no capacity", retry_after_s=5)
        if function == "slow":
            raise DeadlineExceeded("no reply within 10 ms")
        if function == "crash":
            raise RuntimeError(f"failure in {SECRET_PATH}")
        if function == "internal":  # a HuseletError without a caller-facing status
            raise HuseletError(f"state file {SECRET_PATH} is corrupt")
        if function == "badtype":
            return InvokeResult(b"x", "text/plain\r\nX-Injected: yes")
        raise UnknownFunction(f"no function named {function!r} on this node")


# --- the client -----------------------------------------------------------------------


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes
    informational: list[int]

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def request_id(self) -> str:
        return self.headers["x-huselet-request-id"]


class RawClient:
    """A TCP connection that sends raw bytes and parses replies with h11."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.parser = h11.Connection(h11.CLIENT)

    @classmethod
    async def connect(cls, address: TcpAddress) -> RawClient:
        return cls(await trio.open_tcp_stream(address.host, address.port))

    async def send(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def next_event(self) -> h11.Event:
        while True:
            event = self.parser.next_event()
            if isinstance(event, h11.Event):
                return event
            assert event is h11.NEED_DATA  # PAUSED: the helper misused h11
            self.parser.receive_data(await self.stream.receive_some(65536))

    async def response(self, method: bytes = b"POST") -> Response:
        # h11's client only parses a reply to a request it sent itself: tell it
        # about one (the real bytes already went out through send()).
        if self.parser.our_state is h11.DONE and self.parser.their_state is h11.DONE:
            self.parser.start_next_cycle()
        if self.parser.our_state is h11.IDLE:
            self.parser.send(h11.Request(method=method, target=b"/", headers=[(b"Host", b"t")]))
            self.parser.send(h11.EndOfMessage())
        return await self.rest_of_response()

    async def rest_of_response(self) -> Response:
        informational: list[int] = []
        head: h11.Response | None = None
        body = b""
        while True:
            event = await self.next_event()
            if isinstance(event, h11.InformationalResponse):
                informational.append(event.status_code)
            elif isinstance(event, h11.Response):
                head = event
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                assert head is not None
                headers = {k.decode(): v.decode() for k, v in head.headers}
                return Response(head.status_code, headers, body, informational)
            else:
                raise AssertionError(f"unexpected {event!r}")

    async def request(self, method: str, path: str, *headers: str, body: bytes = b"") -> Response:
        await self.send(raw_request(method, path, *headers, body=body))
        return await self.response(method.encode())

    async def closed_by_server(self) -> bytes:
        """Everything the server still sends until it closes; fails (guard) if it never does."""
        received = b""
        with trio.fail_after(GUARD_S):
            while True:
                try:
                    data = await self.stream.receive_some(65536)
                except trio.BrokenResourceError:  # a RST also means closed
                    return received
                if not data:
                    return received
                received += data

    async def aclose(self) -> None:
        await self.stream.aclose()


def raw_request(method: str, path: str, *headers: str, body: bytes = b"") -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: test", *headers]
    if body and not any(
        h.lower().startswith(("content-length", "transfer-encoding")) for h in headers
    ):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def start(
    nursery: trio.Nursery,
    invoker: FakeInvoker | None = None,
    *,
    auth_token: str | None = None,
    **settings: Any,
) -> tuple[TcpAddress, FakeInvoker, HttpIngress]:
    invoker = invoker or FakeInvoker()
    ingress = HttpIngress(replace(SETTINGS, **settings), invoker, auth_token=auth_token)
    bound = await nursery.start(ingress.run)
    return bound, invoker, ingress


async def one_request(
    address: TcpAddress, method: str, path: str, *headers: str, body: bytes = b""
) -> Response:
    client = await RawClient.connect(address)
    try:
        with trio.fail_after(GUARD_S):
            return await client.request(method, path, *headers, body=body)
    finally:
        await client.aclose()


def assert_common_headers(resp: Response) -> None:
    assert resp.headers["server"] == "huselet"
    assert int(resp.headers["content-length"]) == len(resp.body)
    assert resp.headers["content-type"]
    assert resp.headers["x-huselet-request-id"]


def error_of(resp: Response) -> dict[str, Any]:
    assert resp.headers["content-type"] == "application/json"
    return resp.json()["error"]


# --- invoke round-trips -------------------------------------------------------------------


async def test_json_event_round_trip(nursery: trio.Nursery) -> None:
    address, invoker, _ = await start(nursery)
    resp = await one_request(
        address,
        "POST",
        "/v1/invoke/echo",
        "Content-Type: application/json; charset=utf-8",
        body=b'{"name": "huse"}',
    )
    assert resp.status == 200
    assert resp.body == b'{"name": "huse"}'
    assert resp.headers["content-type"] == "application/json"
    assert_common_headers(resp)
    assert [(c.function, c.event, c.kind) for c in invoker.calls] == [
        ("echo", b'{"name": "huse"}', "json")
    ]


@pytest.mark.parametrize(
    ("content_type", "kind"),
    [
        ("Content-Type: application/cloudevents+json", "json"),
        ("Content-Type: APPLICATION/JSON", "json"),
        ("Content-Type: text/plain", "bytes"),
        ("Content-Type: application/jsonx", "bytes"),
        ("Content-Type: +json", "bytes"),
        ("Content-Type: application/+json", "bytes"),
        ("X-Nothing: 1", "bytes"),
    ],
)
async def test_event_kind_follows_content_type(
    nursery: trio.Nursery, content_type: str, kind: str
) -> None:
    address, invoker, _ = await start(nursery)
    resp = await one_request(address, "POST", "/v1/invoke/echo", content_type, body=b"\x00\xff")
    assert resp.status == 200
    assert resp.body == b"\x00\xff"
    assert invoker.calls[0].kind == kind


async def test_empty_body_is_an_empty_event(nursery: trio.Nursery) -> None:
    address, invoker, _ = await start(nursery)
    resp = await one_request(address, "POST", "/v1/invoke/echo")
    assert resp.status == 200
    assert resp.body == b""
    assert invoker.calls[0].event == b""


async def test_chunked_body_within_the_limit_is_assembled(nursery: trio.Nursery) -> None:
    address, _, _ = await start(nursery)
    body = b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
    resp = await one_request(
        address, "POST", "/v1/invoke/echo", "Transfer-Encoding: chunked", body=body
    )
    assert resp.status == 200
    assert resp.body == b"hello world"


async def test_unsafe_result_content_type_is_replaced(nursery: trio.Nursery) -> None:
    address, _, _ = await start(nursery)
    resp = await one_request(address, "POST", "/v1/invoke/badtype")
    assert resp.status == 200
    assert resp.headers["content-type"] == "application/octet-stream"
    assert "x-injected" not in resp.headers


# --- request ids --------------------------------------------------------------------------


async def test_client_request_id_is_echoed_and_passed_on(nursery: trio.Nursery) -> None:
    address, invoker, _ = await start(nursery)
    resp = await one_request(
        address, "POST", "/v1/invoke/echo", "X-Huselet-Request-Id: abc.DEF_1-2"
    )
    assert resp.request_id == "abc.DEF_1-2"
    assert invoker.calls[0].request_id == "abc.DEF_1-2"


@pytest.mark.parametrize(
    "header", [None, "X-Huselet-Request-Id: has space", "X-Huselet-Request-Id: " + "a" * 65]
)
async def test_request_id_is_generated_otherwise(nursery: trio.Nursery, header: str | None) -> None:
    address, invoker, _ = await start(nursery)
    headers = [header] if header else []
    first = await one_request(address, "POST", "/v1/invoke/echo", *headers)
    second = await one_request(address, "POST", "/v1/invoke/echo", *headers)
    for resp in (first, second):
        assert len(resp.request_id) == 16
        int(resp.request_id, 16)
    assert first.request_id != second.request_id
    assert [c.request_id for c in invoker.calls] == [first.request_id, second.request_id]


async def test_error_replies_carry_a_request_id(nursery: trio.Nursery) -> None:
    address, _, _ = await start(nursery)
    resp = await one_request(address, "GET", "/nowhere", "X-Huselet-Request-Id: trace-7")
    assert resp.status == 404
    assert resp.request_id == "trace-7"
    assert_common_headers(resp)


# --- routing ------------------------------------------------------------------------------


async def test_unknown_path_is_404(nursery: trio.Nursery) -> None:
    address, _, _ = await start(nursery)
    for path in ("/", "/v1/invoke", "/healthz/", "/v1/invokeecho"):
        resp = await one_request(address, "GET", path)
        assert resp.status == 404, path
        assert error_of(resp)["code"] == "not_found"
    # Under the invoke prefix, whatever is not a valid name is an unknown function.
    resp = await one_request(address, "POST", "/v1/invoke/")
    assert resp.status == 404
    assert error_of(resp)["code"] == "unknown_function"
    # A path under a function that does not take HTTP events is no route at all.
    resp = await one_request(address, "POST", "/v1/invoke/echo/extra")
    assert resp.status == 404
    assert error_of(resp)["code"] == "not_found"
    assert "events" in error_of(resp)["message"]


@pytest.mark.parametrize("name", ["Echo", "-echo", "a" * 64, "ec%68o", "ec.ho"])
async def test_invalid_function_name_is_404(nursery: trio.Nursery, name: str) -> None:
    address, invoker, _ = await start(nursery)
    resp = await one_request(address, "POST", f"/v1/invoke/{name}")
    assert resp.status == 404
    assert error_of(resp)["code"] == "unknown_function"
    assert invoker.calls == []


async def test_unknown_function_from_the_scheduler_is_404(nursery: trio.Nursery) -> None:
    address, invoker, _ = await start(nursery)
    resp = await one_request(address, "POST", "/v1/invoke/nosuch?x=1")
    assert resp.status == 404
    assert error_of(resp)["code"] == "unknown_function"
    assert invoker.calls[0].function == "nosuch"


async def test_wrong_method_is_405_with_allow(nursery: trio.Nursery) -> None:
    address, _, _ = await start(nursery)
    resp = await one_request(address, "GET", "/v1/invoke/echo")
    assert resp.status == 405
    assert resp.headers["allow"] == "POST"
    assert error_of(resp)["code"] == "method_not_allowed"
    resp = await one_request(address, "POST", "/healthz")
    assert resp.status == 405
    assert resp.headers["allow"] == "GET, HEAD"


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


# --- scheduler errors ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("function", "status", "code", "retry_after"),
    [
        ("full", 429, "queue_full", "2"),
        ("lost", 502, "instance_lost", None),
        ("unavailable", 503, "unavailable", "5"),
        ("slow", 504, "deadline_exceeded", None),
    ],
)
async def test_scheduler_errors_map_to_status(
    nursery: trio.Nursery, function: str, status: int, code: str, retry_after: str | None
) -> None:
    address, _, _ = await start(nursery)
    resp = await one_request(address, "POST", f"/v1/invoke/{function}")
    assert resp.status == status
    error = error_of(resp)
    assert error["code"] == code
    assert error["message"]
    assert "type" not in error
    assert resp.headers.get("retry-after") == retry_after
    assert_common_headers(resp)


async def test_handler_error_is_502_with_type(nursery: trio.Nursery) -> None:
    address, _, _ = await start(nursery)
    resp = await one_request(address, "POST", "/v1/invoke/boom")
    assert resp.status == 502
    assert error_of(resp) == {"code": "handler_error", "message": "bad input", "type": "ValueError"}


@pytest.mark.parametrize("function", ["crash", "internal"])
async def test_unexpected_exception_is_500_without_details(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture, function: str
) -> None:
    address, _, _ = await start(nursery)
    with caplog.at_level(logging.ERROR, logger="huselet.gateway"):
        resp = await one_request(address, "POST", f"/v1/invoke/{function}")
    assert resp.status == 500
    assert error_of(resp) == {"code": "internal", "message": "internal error"}
    assert b"secret" not in resp.body and b"Traceback" not in resp.body
    logged = [r.exc_info[1] for r in caplog.records if r.exc_info]
    assert logged and SECRET_PATH in str(logged[0])
    # The daemon keeps serving.
    assert (await one_request(address, "GET", "/healthz")).status == 200


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


async def test_expect_100_continue_refused_when_too_large(nursery: trio.Nursery) -> None:
    address, invoker, _ = await start(nursery)
    client = await RawClient.connect(address)
    with trio.fail_after(GUARD_S):
        await client.send(
            raw_request("POST", "/v1/invoke/echo", "Content-Length: 4096", "Expect: 100-continue")
        )
        resp = await client.response()
        assert resp.informational == []
        assert resp.status == 413
        assert await client.closed_by_server() == b""
    assert invoker.calls == []


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


# --- HTTP functions -------------------------------------------------------------------------


async def test_http_functions_take_any_method_and_sub_path(nursery: trio.Nursery) -> None:
    address, invoker, _ = await start(nursery, auth_token="s3cret")
    resp = await one_request(
        address,
        "DELETE",
        "/v1/invoke/web/a/b%20c?x=1&y",
        "Authorization: Bearer s3cret",
        "X-Huselet-Timeout-Ms: 5000",
        "Connection: keep-alive, x-hop",
        "X-Hop: 1",
        "Keep-Alive: timeout=5",
        "X-Kept: yes",
        body=b"payload",
    )
    assert resp.status == 201
    assert resp.body == b"payload"
    assert resp.headers["x-seen"] == "1"
    assert resp.headers["server"] == "huselet"  # the function's "evil" Server is dropped
    (http,) = invoker.http
    assert http is not None
    assert (http.method, http.path, http.query) == ("DELETE", "/a/b%20c", "x=1&y")
    assert http.source_ip == "127.0.0.1"
    names = [name for name, _ in http.headers]
    assert "x-kept" in names and "host" in names
    # The node's credential, its own headers and hop-by-hop ones stay out.
    for dropped in ("authorization", "x-huselet-timeout-ms", "connection", "x-hop", "keep-alive"):
        assert dropped not in names, dropped
    assert invoker.calls[0].kind == "bytes"
    # The bearer check still applies to HTTP functions.
    resp = await one_request(address, "GET", "/v1/invoke/web/")
    assert resp.status == 401


async def test_http_function_root_path_is_slash(nursery: trio.Nursery) -> None:
    address, invoker, _ = await start(nursery)
    for target in ("/v1/invoke/web", "/v1/invoke/web/", "/v1/invoke/web?q=1"):
        await one_request(address, "GET", target)
    assert [h.path for h in invoker.http if h] == ["/", "/", "/"]
    assert [h.query for h in invoker.http if h] == ["", "", "q=1"]
