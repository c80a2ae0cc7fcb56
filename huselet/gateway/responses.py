"""Replies of the HTTP ingress: the reply value, error bodies and wire encoding.

Everything here is synchronous and allocation-light because it runs once per
request on the hot path: bodies of fixed replies are encoded once at import,
error bodies are tiny, and a whole response (head, body, end) is serialised
into a single ``bytes`` so the connection can write it with one ``send_all``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import lru_cache
from http import HTTPStatus

import h11

from huselet.errors import HandlerError, HuseletError, PayloadTooLarge, Unauthorized
from huselet.gateway.admission import Refusal

JSON = b"application/json"
OCTET_STREAM = b"application/octet-stream"
SERVER = b"huselet"

_REASONS: dict[int, bytes] = {s.value: s.phrase.encode("ascii") for s in HTTPStatus}
# A content type chosen by function code becomes a header value: restrict it to
# visible ASCII (plus inner spaces) so it can neither break h11's validation
# (which would fail the reply) nor smuggle extra header lines.
_SAFE_HEADER_VALUE = re.compile(r"[\x21-\x7e](?:[\x20-\x7e]{0,254}[\x21-\x7e])?")


# --- errors that only the ingress raises ------------------------------------------
# They are HuseletError subclasses so that every error reply, whatever raised it,
# goes through the single error_reply() below.


class NotFound(HuseletError):
    status, code = 404, "not_found"


class MethodNotAllowed(HuseletError):
    status, code = 405, "method_not_allowed"

    def __init__(self, allow: bytes) -> None:
        super().__init__(f"method not allowed; use {allow.decode('ascii')}")
        self.allow = allow


class RequestTimeout(HuseletError):
    status, code = 408, "request_timeout"


class HeadersTooLarge(HuseletError):
    status, code = 431, "headers_too_large"


class InternalError(HuseletError):
    status, code = 500, "internal"


class Overloaded(HuseletError):
    status, code = 503, "overloaded"


# --- replies ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    body: bytes
    content_type: bytes = JSON
    headers: tuple[tuple[bytes, bytes], ...] = ()
    # The connection must close after this reply (e.g. the request body was left unread).
    close: bool = False


HEALTH_OK = Reply(200, b'{"status":"ok"}')
HEALTH_DRAINING = Reply(503, b'{"status":"draining"}')


def error_reply(exc: HuseletError) -> Reply:
    """The JSON error reply for ``exc``: its status, code, message and hint headers."""
    error: dict[str, str] = {"code": exc.code, "message": exc.message}
    if isinstance(exc, HandlerError):
        error["type"] = exc.error_type
    refusal = exc if isinstance(exc, Refusal) else None
    if refusal is not None:
        error["reason"] = refusal.reason.value  # which check or limit refused it
    # ensure_ascii (the default) keeps the encode below total even for lone surrogates.
    body = json.dumps({"error": error}, separators=(",", ":")).encode("ascii")
    headers: list[tuple[bytes, bytes]] = []
    if exc.retry_after_s is not None:
        headers.append((b"Retry-After", b"%d" % max(0, int(exc.retry_after_s))))
    if isinstance(exc, MethodNotAllowed):
        headers.append((b"Allow", exc.allow))
    elif refusal is not None and refusal.challenge is not None:
        headers.append((b"WWW-Authenticate", refusal.challenge))
    elif isinstance(exc, Unauthorized):
        headers.append((b"WWW-Authenticate", b'Bearer realm="huselet"'))
    # A 413 or 431 is sent before (all of) the body was read; the unread rest
    # would be parsed as the next request, so the connection cannot be reused.
    close = isinstance(exc, PayloadTooLarge | HeadersTooLarge)
    return Reply(exc.status, body, JSON, tuple(headers), close=close)


@lru_cache(maxsize=256)
def content_type_header(content_type: str) -> bytes:
    """``content_type`` as a header value, or application/octet-stream when unsafe.

    Cached: functions return a handful of distinct content types, so the check
    runs once per type rather than once per request.
    """
    if _SAFE_HEADER_VALUE.fullmatch(content_type):
        return content_type.encode("ascii")
    return OCTET_STREAM


def render(
    conn: h11.Connection, reply: Reply, request_id: str, *, close: bool, head_only: bool
) -> bytes:
    """Serialise ``reply`` as one complete response (head, body, end) for ``conn``.

    ``close`` adds ``Connection: close`` (h11 then moves to MUST_CLOSE);
    ``head_only`` leaves out the body, as a reply to HEAD must.
    """
    headers = [
        (b"Content-Type", reply.content_type),
        (b"Content-Length", b"%d" % len(reply.body)),
        (b"Server", SERVER),
        (b"X-Huselet-Request-Id", request_id.encode("ascii")),
        *reply.headers,
    ]
    if close:
        headers.append((b"Connection", b"close"))
    response = h11.Response(
        status_code=reply.status, headers=headers, reason=_REASONS.get(reply.status, b"")
    )
    # The passthrough variant hands the body back by reference, so the join
    # below is the only copy of it.
    parts = conn.send_with_data_passthrough(response) or []
    if reply.body and not head_only:
        parts += conn.send_with_data_passthrough(h11.Data(data=reply.body)) or []
    parts += conn.send_with_data_passthrough(h11.EndOfMessage()) or []
    return b"".join(parts)
