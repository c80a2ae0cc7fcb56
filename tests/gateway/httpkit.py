"""The HTTP ingress under test and a raw client for it.

An in-test invoker records the calls and answers by function name; requests are
hand-written bytes (so malformed, pipelined and half-sent requests can be expressed
exactly) and replies are parsed by h11 in client mode. Shared by the
tests/gateway/test_http_*.py files.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from typing import Any

import h11
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
