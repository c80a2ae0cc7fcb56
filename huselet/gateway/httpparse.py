"""Sans-IO HTTP/1.1 request parsing for the ingress: llhttp (``httptools``) plus our rules.

:class:`RequestParser` takes bytes as they arrive and hands out events in order:
a :class:`RequestHead` per request, ``bytes`` of its (de-chunked) body,
:data:`END_OF_MESSAGE`, and :data:`CONNECTION_CLOSED` when the client closed
between requests. :data:`NEED_DATA` means "feed more". A request the parser
refuses raises :class:`HttpProtocolError` in its place in the sequence, so
pipelined requests before it are still answered, as they were with h11.

llhttp (Node's parser, the one uvicorn uses through httptools) does framing in
C at ~1 µs per request here, against ~60 µs for h11's parse and render. It
already refuses the request-smuggling shapes in strict mode (Content-Length
together with Transfer-Encoding, duplicate or non-numeric Content-Length,
Transfer-Encoding not ending in ``chunked``, obs-fold, bare LF, bad tokens,
control characters in values). Unlike h11 it also refuses methods it does
not know (RFC 9110, WebDAV, ``PATCH``, ``PURGE``… pass), and it skips blank
lines between requests and doubled spaces in the request line, which h11
refused; none of these changes how a request is framed (see the differential
test in tests/gateway/test_httpparse.py).
What llhttp leaves to the server, this module adds, keeping h11's behaviour:

- a bound on the head (request line and headers): a head still incomplete
  after :attr:`max_head_bytes` fed bytes is a 431 (llhttp has no limit, and
  httptools buffers a partial header in memory);
- ``Host`` exactly once on HTTP/1.1 and at most once on HTTP/1.0;
- ``Transfer-Encoding`` only as exactly ``chunked`` (h11 refused ``gzip,
  chunked`` too; we never decode transfer codings);
- HTTP/1.0 and HTTP/1.1 only, keep-alive on HTTP/1.1 only;
- header names lower-cased and values stripped of surrounding whitespace, as
  h11 handed them out; trailers of chunked bodies dropped;
- an ``Upgrade`` (or ``CONNECT``) is never switched to: the request is answered
  like any other and the connection closes after it.

Buffering is bounded by the caller: it feeds only when it needs an event, so
at most one read's worth of pipelined input waits here as events.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from enum import Enum
from typing import Final

import httptools


class _Marker(Enum):
    NEED_DATA = "need_data"
    END_OF_MESSAGE = "end_of_message"
    CONNECTION_CLOSED = "connection_closed"


NEED_DATA: Final = _Marker.NEED_DATA
END_OF_MESSAGE: Final = _Marker.END_OF_MESSAGE
CONNECTION_CLOSED: Final = _Marker.CONNECTION_CLOSED

_CHUNKED = b"chunked"
_CONTINUE = b"100-continue"
_WS = b" \t"


class HttpProtocolError(Exception):
    """The client broke HTTP/1.1: answer ``status`` (400 or 431) and close.

    ``client_closed``: the client closed mid-request, so there is nobody to answer.
    """

    def __init__(self, message: str, status: int = 400, *, client_closed: bool = False) -> None:
        super().__init__(message)
        self.status = status
        self.client_closed = client_closed


@dataclass(slots=True)
class RequestHead:
    """One request's line and headers, as the parser saw them (names lower-cased)."""

    method: bytes
    target: bytes
    headers: list[tuple[bytes, bytes]]
    http_version: str  # "1.0" or "1.1"
    keep_alive: bool  # HTTP/1.1 without Connection: close or Upgrade
    expect_continue: bool  # HTTP/1.1 "Expect: 100-continue"


Event = RequestHead | bytes | _Marker


class RequestParser:
    """Feed with :meth:`receive`, take events with :meth:`next_event` (see the module doc)."""

    __slots__ = (
        "_begun",
        "_broken",
        "_events",
        "_head_fed",
        "_headers",
        "_in_head",
        "_max_head_bytes",
        "_parser",
        "_url",
    )

    def __init__(self, max_head_bytes: int) -> None:
        self._max_head_bytes = max_head_bytes
        self._parser = httptools.HttpRequestParser(self)
        self._events: deque[Event | HttpProtocolError] = deque()
        self._in_head = True  # no complete head yet for the current message
        self._begun = False  # some byte of the current message has been parsed
        self._head_fed = 0  # bytes fed while the current head was incomplete
        self._broken = False  # an error or end is queued: nothing more is parsed
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []

    @property
    def in_request(self) -> bool:
        """Part of a request (or a whole one) is here, not yet taken as events."""
        return self._begun or bool(self._events)

    def next_event(self) -> Event:
        """The next event, or NEED_DATA; raises HttpProtocolError where the input broke."""
        if not self._events:
            return NEED_DATA
        event = self._events.popleft()
        if type(event) is HttpProtocolError:
            self._events.appendleft(event)  # it stays the answer to every later call
            raise event
        return event  # type: ignore[return-value]  # narrowed by the check above

    def receive(self, data: bytes) -> None:
        """Parse ``data``; ``b""`` means the client closed its end."""
        if self._broken:
            return
        if not data:
            self._broken = True
            if self._begun:
                self._fail(HttpProtocolError("the client closed mid-request", client_closed=True))
            else:
                self._events.append(CONNECTION_CLOSED)
            return
        if self._in_head:
            self._head_fed += len(data)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # Paused after a request asking to switch protocols; we never do.
            self._broken = True
            if self._begun:
                self._fail(HttpProtocolError("protocol upgrade with an unfinished request"))
            return
        except httptools.HttpParserError as exc:
            if not self._broken:
                self._fail(HttpProtocolError(f"malformed HTTP request: {exc}"))
            return
        if self._in_head and self._begun and self._head_fed > self._max_head_bytes:
            self._fail(HttpProtocolError("request line and headers are too large", 431))

    def _fail(self, error: HttpProtocolError) -> None:
        self._broken = True
        self._events.append(error)

    # --- llhttp callbacks (called from feed_data) -------------------------------------------

    def on_message_begin(self) -> None:
        self._begun = True
        self._in_head = True
        self._url = b""
        self._headers = []

    def on_url(self, url: bytes) -> None:
        self._url += url  # may come in pieces

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self._in_head:
            return  # a trailer of a chunked body: dropped, as h11's users did
        if value and (value[-1] in _WS or value[0] in _WS):
            value = value.strip(_WS)
        self._headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        parser = self._parser
        version = parser.get_http_version()
        headers = self._headers
        self._in_head = False
        self._head_fed = 0
        error = _check_head(version, headers)
        if error is not None:
            self._fail(HttpProtocolError(error))
            # Stop llhttp here: nothing after a refused head is parsed.
            raise _Stop
        expect = keep_alive = False
        if version == "1.1":
            for name, value in headers:
                if name == b"expect" and value.lower() == _CONTINUE:
                    expect = True
            # HTTP/1.0 keep-alive is not offered (as with h11): such a client
            # gets Connection: close and the connection ends after the reply.
            keep_alive = parser.should_keep_alive() and not parser.should_upgrade()
        self._events.append(
            RequestHead(parser.get_method(), self._url, headers, version, keep_alive, expect)
        )

    def on_body(self, body: bytes) -> None:
        self._events.append(body)

    def on_message_complete(self) -> None:
        self._begun = False
        self._in_head = True
        self._head_fed = 0
        self._events.append(END_OF_MESSAGE)


class _Stop(Exception):
    """Raised in a callback to make llhttp stop (feed_data then raises HttpParserError)."""


def _check_head(version: str, headers: list[tuple[bytes, bytes]]) -> str | None:
    """What is wrong with a parsed head that llhttp accepts, or None."""
    if version != "1.1" and version != "1.0":
        return f"unsupported HTTP version {version}"
    hosts = 0
    for name, value in headers:
        if name == b"host":
            hosts += 1
        elif name == b"transfer-encoding" and value.lower() != _CHUNKED:
            return "Transfer-Encoding must be chunked"
    if hosts > 1:
        return "more than one Host header"
    if hosts == 0 and version == "1.1":
        return "missing Host header"
    return None
