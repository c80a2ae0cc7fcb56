"""The ingress side of HTTP functions: what crosses to the instance and back.

A function with ``events = "http"`` (or a WSGI/ASGI app) is reached at
``ANY /v1/invoke/{function}`` and ``ANY /v1/invoke/{function}/{path...}``.
Its instance gets the request as a :class:`protocol.link.HttpRequest` (method,
the path under the function, raw query, headers, source address) plus the raw
body, and answers with a status, headers and a body.

Headers huselet owns are filtered both ways:

- hop-by-hop headers (RFC 9110 7.6.1: ``Connection`` and the ones it names,
  ``Keep-Alive``, ``TE``, ``Trailer``, ``Transfer-Encoding``, ``Upgrade``,
  ``Proxy-*``) describe one connection, not the request;
- ``X-Huselet-*`` are the ingress's own (timeout, request id);
- ``Authorization`` when the ingress checks a bearer token: the node's
  credential is not the function's business;
- on the way back also ``Content-Length`` and ``Server`` (the ingress frames
  the body and names itself) and any header that cannot be sent (bad name or
  value): dropped rather than failing the reply.
"""

from __future__ import annotations

from collections.abc import Sequence

from huselet.dispatch.invocation import InvokeResult
from huselet.gateway.responses import (
    HEADER_NAME,
    HEADER_VALUE,
    JSON,
    OCTET_STREAM,
    Reply,
    content_type_header,
)
from huselet.gateway.routes import RequestHead
from protocol.link import HttpRequest

HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)
OWN_PREFIX = b"x-huselet-"
REPLY_OWNED = frozenset({b"content-length", b"server", b"content-type"})
MAX_REPLY_HEADERS = 200
# No body may follow these statuses (RFC 9110 15.3.5, 15.4.5).
_BODILESS = frozenset({204, 304})


def _connection_tokens(headers: Sequence[tuple[bytes, bytes]]) -> set[bytes]:
    named: set[bytes] = set()
    for name, value in headers:
        if name == b"connection":
            named.update(t.strip().lower() for t in value.split(b",") if t.strip())
    return named


def request_info(head: RequestHead, subpath: bytes, *, strip_authorization: bool) -> HttpRequest:
    """What the instance learns about the request (headers filtered, see module doc)."""
    query = head.target.partition(b"?")[2]
    named = _connection_tokens(head.headers)
    headers = []
    for name, value in head.headers:  # the parser hands names lower-cased
        if (
            name in HOP_BY_HOP
            or name in named
            or name.startswith(OWN_PREFIX)
            or (strip_authorization and name == b"authorization")
        ):
            continue
        headers.append((name.decode("latin-1"), value.decode("latin-1")))
    return HttpRequest(
        method=head.method.decode("ascii"),
        path=subpath.decode("latin-1") or "/",
        query=query.decode("latin-1"),
        headers=tuple(headers),
        source_ip=head.client,
    )


def function_reply(result: InvokeResult) -> Reply:
    """The reply for an HTTP function's result: its status, its headers (filtered)."""
    content_type = b""
    headers: list[tuple[bytes, bytes]] = []
    raw = result.headers
    named = {
        t.strip().lower().encode("latin-1", "replace")
        for name, value in raw
        if name.lower() == "connection"
        for t in value.split(",")
    }
    for name_s, value_s in raw[:MAX_REPLY_HEADERS]:
        try:
            raw_name = name_s.encode("latin-1")
            value = value_s.encode("latin-1")
        except UnicodeEncodeError:
            continue
        if HEADER_NAME.fullmatch(raw_name) is None or HEADER_VALUE.fullmatch(value) is None:
            continue  # not sendable (and CR/LF must never split a header)
        name = raw_name.lower()
        if name == b"content-type":
            content_type = content_type or content_type_header(value_s)
            continue
        if (
            name in HOP_BY_HOP
            or name in named
            or name in REPLY_OWNED
            or name.startswith(OWN_PREFIX)
        ):
            continue
        headers.append((raw_name, value))  # the function's spelling
    body = b"" if result.status in _BODILESS else result.body
    if not content_type:
        content_type = (
            content_type_header(result.content_type) if result.content_type else OCTET_STREAM
        )
    return Reply(result.status, body, content_type or JSON, tuple(headers))
