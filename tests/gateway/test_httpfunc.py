"""huselet.gateway.httpfunc: what an HTTP function's reply may and may not carry."""

from __future__ import annotations

from huselet.dispatch.invocation import InvokeResult
from huselet.gateway.httpfunc import function_reply


def reply(*headers: tuple[str, str], status: int = 200, body: bytes = b"b") -> tuple:  # type: ignore[type-arg]
    r = function_reply(InvokeResult(body, "application/octet-stream", status, headers))
    return r.status, r.content_type, dict(r.headers), r.body


def test_headers_that_could_break_or_forge_the_reply_are_dropped() -> None:
    status, ctype, headers, body = reply(
        ("X-Ok", "fine"),
        ("X-Split", "a\r\nSet-Cookie: evil=1"),
        ("Bad Name", "x"),
        ("X-Unicode", "\u2603"),
        ("X-Huselet-Request-Id", "forged"),
        ("Content-Length", "999"),
        ("Transfer-Encoding", "chunked"),
        ("Connection", "x-private"),
        ("X-Private", "hop"),
        ("Content-Type", "text/html; charset=utf-8"),
    )
    assert headers == {b"X-Ok": b"fine"}
    assert (status, ctype, body) == (200, b"text/html; charset=utf-8", b"b")


def test_no_body_with_204_and_304_and_a_default_content_type() -> None:
    assert reply(status=204)[3] == b"" and reply(status=304)[3] == b""
    assert reply()[1] == b"application/octet-stream"
