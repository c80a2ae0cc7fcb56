"""huselet.gateway.responses.render: the wire form of replies, checked by h11 as a client."""

from __future__ import annotations

import h11
import pytest

from huselet.gateway.responses import BadReply, Reply, render


def parse(data: bytes, method: str = "GET") -> tuple[h11.Response, bytes]:
    """(response, body) as an HTTP/1.1 client reads ``data``: exactly one response."""
    client = h11.Connection(h11.CLIENT)
    client.send(h11.Request(method=method, target="/", headers=[("Host", "t")]))
    client.send(h11.EndOfMessage())
    client.receive_data(data)
    response = client.next_event()
    assert isinstance(response, h11.Response), response
    body = b""
    while True:
        event = client.next_event()
        if isinstance(event, h11.Data):
            body += event.data
        else:
            assert isinstance(event, h11.EndOfMessage), event
            break
    assert client.their_state in (h11.DONE, h11.MUST_CLOSE)
    assert client.trailing_data == (b"", False)  # nothing after the reply
    return response, body


def headers_of(response: h11.Response) -> dict[bytes, bytes]:
    return dict((name, value) for name, value in response.headers)


def test_a_reply_as_a_client_reads_it() -> None:
    reply = Reply(201, b'{"a":1}', headers=((b"Retry-After", b"3"),))
    response, body = parse(render(reply, "rid-1", close=False, head_only=False))
    assert (response.status_code, response.reason, body) == (201, b"Created", b'{"a":1}')
    assert response.http_version == b"1.1"
    assert headers_of(response) == {
        b"content-type": b"application/json",
        b"content-length": b"7",
        b"server": b"huselet",
        b"x-huselet-request-id": b"rid-1",
        b"retry-after": b"3",
    }


def test_close_and_head_only() -> None:
    reply = Reply(200, b"body", b"text/plain")
    data = render(reply, "r", close=True, head_only=True)
    assert data.endswith(b"Connection: close\r\n\r\n")
    response, body = parse(data, method="HEAD")
    assert headers_of(response)[b"content-length"] == b"4" and body == b""


def test_unknown_status_has_an_empty_reason_and_bad_statuses_are_refused() -> None:
    response, _ = parse(render(Reply(599, b""), "r", close=False, head_only=False))
    assert (response.status_code, response.reason) == (599, b"")
    for status in (99, 100, 101, 199, 1000, -1):
        with pytest.raises(BadReply):
            render(Reply(status, b""), "r", close=False, head_only=False)


@pytest.mark.parametrize(
    "header",
    [
        (b"X-Split", b"a\r\nSet-Cookie: evil=1"),
        (b"X-Lf", b"a\nSet-Cookie: evil=1"),
        (b"X-Cr", b"a\rb"),
        (b"X-Nul", b"a\x00b"),
        (b"X-Bad\r\nSet-Cookie", b"evil=1"),
        (b"Bad Name", b"x"),
    ],
)
def test_header_injection_is_dropped_and_the_rest_kept(header: tuple[bytes, bytes]) -> None:
    reply = Reply(200, b"ok", headers=(header, (b"X-Ok", b"fine")))
    data = render(reply, "r", close=True, head_only=False)
    response, body = parse(data)
    names = [name for name, _ in response.headers]
    assert b"set-cookie" not in names
    assert headers_of(response)[b"x-ok"] == b"fine"
    assert headers_of(response)[b"connection"] == b"close"
    assert body == b"ok"
    assert data.count(b"\r\n") == data.count(b"\n") == data.count(b"\r")


def test_injection_through_the_content_type_or_request_id_is_neutralised() -> None:
    reply = Reply(200, b"ok", b"text/html\r\nSet-Cookie: evil=1")
    response, _ = parse(render(reply, "id\r\nX-Evil: 1", close=False, head_only=False))
    headers = headers_of(response)
    assert headers[b"content-type"] == b"application/octet-stream"
    assert b"set-cookie" not in headers and b"x-evil" not in headers
    assert headers[b"x-huselet-request-id"] != b"id"
