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

from huselet.errors import HandlerError, HuseletError, PayloadTooLarge, Unauthorized
from huselet.gateway.admission import Refusal
from huselet.observe.ids import new_request_id

JSON = b"application/json"
OCTET_STREAM = b"application/octet-stream"
SERVER = b"huselet"

_STATUS_LINES: dict[int, bytes] = {
    s.value: b"HTTP/1.1 %d %s\r\n" % (s.value, s.phrase.encode("ascii")) for s in HTTPStatus
}
# A content type chosen by function code becomes a header value: restrict it to
# visible ASCII (plus inner spaces) so it can neither be refused by a client
# nor smuggle extra header lines.
_SAFE_HEADER_VALUE = re.compile(r"[\x21-\x7e](?:[\x20-\x7e]{0,254}[\x21-\x7e])?")
# RFC 9110 field syntax, for the slow path of render(): a token as the name;
# visible ASCII, obs-text and inner spaces/tabs as the value (never CR, LF, NUL).
HEADER_NAME = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
HEADER_VALUE = re.compile(
    rb"(?:[\x21-\x7e\x80-\xff](?:[\x20-\x7e\x80-\xff\t]*[\x21-\x7e\x80-\xff])?)?"
)
# Header names already checked: replies carry a handful of distinct names, so
# the regex runs once per name, not once per header per reply.
_GOOD_NAMES: set[bytes] = set()
_MAX_GOOD_NAMES = 4096
# Status line, Content-Type, Content-Length, Server, X-Huselet-Request-Id, blank line.
_FIXED_LINES = 6


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


class TooManyConnections(HuseletError):
    """One source address holds its share of connections (``max_connections_per_source``)."""

    status, code = 429, "too_many_connections"

    def __init__(self, message: str) -> None:
        super().__init__(message, retry_after_s=1)


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
    refusal = exc if isinstance(exc, Refusal) else None
    if refusal is not None:
        # A flood of refusals repeats a handful of bodies: rendered once each.
        body = _refusal_body(exc.code, exc.message, refusal.reason.value)
    else:
        error: dict[str, str] = {"code": exc.code, "message": exc.message}
        if isinstance(exc, HandlerError):
            error["type"] = exc.error_type
        body = _json_body(error)
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


def _json_body(error: dict[str, str]) -> bytes:
    # ensure_ascii (the default) keeps the encode total even for lone surrogates.
    return json.dumps({"error": error}, separators=(",", ":")).encode("ascii")


@lru_cache(maxsize=256)
def _refusal_body(code: str, message: str, reason: str) -> bytes:
    """An admission refusal's body; ``reason`` names the check or limit that refused it."""
    return _json_body({"code": code, "message": message, "reason": reason})


@lru_cache(maxsize=256)
def content_type_header(content_type: str) -> bytes:
    """``content_type`` as a header value, or application/octet-stream when unsafe.

    Cached: functions return a handful of distinct content types, so the check
    runs once per type rather than once per request.
    """
    if _SAFE_HEADER_VALUE.fullmatch(content_type):
        return content_type.encode("ascii")
    return OCTET_STREAM


class BadReply(HuseletError):
    """A reply that cannot be written as HTTP/1.1 (e.g. a status outside 200-999)."""

    status, code = 500, "internal"


def render(reply: Reply, request_id: str, *, close: bool, head_only: bool) -> bytes:
    """Serialise ``reply`` as one complete HTTP/1.1 response (head and body).

    ``close`` adds ``Connection: close``; ``head_only`` leaves out the body, as
    a reply to HEAD must. Header injection guard: every name and value is
    checked to hold no CR, LF or NUL (one count over the whole head on the hot
    path) and every name is a token (checked once per distinct name); a reply
    whose head fails it is rebuilt from the headers that pass
    :data:`HEADER_NAME`/:data:`HEADER_VALUE`, the others dropped.
    """
    status = reply.status
    if not 200 <= status <= 999:
        raise BadReply(f"status {status} cannot be sent as a final response")
    status_line = _STATUS_LINES.get(status) or b"HTTP/1.1 %d \r\n" % status
    headers = reply.headers
    rid = request_id.encode("ascii", "replace")
    parts = [
        status_line,
        b"Content-Type: ",
        reply.content_type,
        b"\r\nContent-Length: %d\r\nServer: huselet\r\nX-Huselet-Request-Id: " % len(reply.body),
        rid,
        b"\r\n",
    ]
    clean = True
    for name, value in headers:
        if name not in _GOOD_NAMES:
            clean = _good_name(name) and clean
        parts += (name, b": ", value, b"\r\n")
    if close:
        parts.append(b"Connection: close\r\n")
    parts.append(b"\r\n")
    head = b"".join(parts)
    lines = _FIXED_LINES + len(headers) + close
    if not clean or head.count(b"\n") != lines or head.count(b"\r") != lines or b"\0" in head:
        return render(_sanitised(reply, rid), _safe_id(rid), close=close, head_only=head_only)
    if head_only or not reply.body:
        return head
    return head + reply.body


def _good_name(name: bytes) -> bool:
    """Whether ``name`` is a valid field name; valid ones are remembered (a bounded set)."""
    if HEADER_NAME.fullmatch(name) is None:
        return False
    if len(_GOOD_NAMES) < _MAX_GOOD_NAMES:
        _GOOD_NAMES.add(name)
    return True


def _sanitised(reply: Reply, request_id: bytes) -> Reply:
    """``reply`` without the headers that would break (or inject into) the head."""
    content_type = reply.content_type
    if not (HEADER_VALUE.fullmatch(content_type) and content_type):
        content_type = OCTET_STREAM
    headers = tuple(
        (name, value)
        for name, value in reply.headers
        if HEADER_NAME.fullmatch(name) and HEADER_VALUE.fullmatch(value)
    )
    return Reply(reply.status, reply.body, content_type, headers, reply.close)


def _safe_id(request_id: bytes) -> str:
    if request_id and HEADER_VALUE.fullmatch(request_id):
        return request_id.decode("ascii")
    return new_request_id()
