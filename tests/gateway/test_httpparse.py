"""huselet.gateway.httpparse: framing, limits and refusals of the ingress's request parser.

The parser is sans-IO, so every rule is checked here on bytes; the same rules
end to end (a real ingress on a real socket) are in test_http_requests.py and
test_http_connections.py.
"""

from __future__ import annotations

import random

import h11
import pytest
from fuzz_support import mutate, targets

from huselet.gateway.httpparse import (
    CONNECTION_CLOSED,
    END_OF_MESSAGE,
    NEED_DATA,
    HttpProtocolError,
    RequestHead,
    RequestParser,
)

LIMIT = 1024


def events(*chunks: bytes, limit: int = LIMIT) -> list[object]:
    """Every event after feeding ``chunks``; a refusal ends the list as ("error", status)."""
    parser = RequestParser(limit)
    for chunk in chunks:
        parser.receive(chunk)
    out: list[object] = []
    while True:
        try:
            event = parser.next_event()
        except HttpProtocolError as exc:
            out.append(("error", exc.status, exc.client_closed))
            return out
        if event is NEED_DATA:
            return out
        out.append(event)
        if event is CONNECTION_CLOSED:
            return out


def only_error(*chunks: bytes, limit: int = LIMIT) -> tuple[str, int, bool]:
    got = events(*chunks, limit=limit)
    assert len(got) == 1 and isinstance(got[0], tuple), got
    return got[0]  # type: ignore[return-value]


def test_a_simple_request_with_a_body() -> None:
    got = events(b"POST /v1/invoke/f?x=1 HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\n\r\nping")
    head = got[0]
    assert isinstance(head, RequestHead)
    assert (head.method, head.target, head.http_version) == (b"POST", b"/v1/invoke/f?x=1", "1.1")
    assert head.headers == [(b"host", b"t"), (b"content-length", b"4")]
    assert head.keep_alive and not head.expect_continue
    assert got[1:] == [b"ping", END_OF_MESSAGE]


def test_names_are_lower_cased_and_values_stripped() -> None:
    head = events(b"GET / HTTP/1.1\r\nHOST: t\r\nX-Thing:  \t a b \t \r\n\r\n")[0]
    assert isinstance(head, RequestHead)
    assert head.headers == [(b"host", b"t"), (b"x-thing", b"a b")]


def test_chunked_body_in_pieces_and_trailers_are_dropped() -> None:
    got = events(
        b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nab",
        b"c\r\n2;ext=1\r\nde\r\n0\r\nX-Trailer: t\r\n\r\n",
    )
    head = got[0]
    assert isinstance(head, RequestHead)
    assert (b"x-trailer", b"t") not in head.headers
    assert b"".join(e for e in got if isinstance(e, bytes)) == b"abcde"
    assert got[-1] is END_OF_MESSAGE


def test_pipelined_requests_come_out_in_order_and_a_bad_one_after_the_good() -> None:
    got = events(
        b"GET /a HTTP/1.1\r\nHost: t\r\n\r\n"
        b"POST /b HTTP/1.1\r\nHost: t\r\nContent-Length: 1\r\n\r\nx"
        b"GET /c HTTP/1.1\r\n\r\n"  # no Host: refused, in its place
    )
    assert [e.target for e in got if isinstance(e, RequestHead)] == [b"/a", b"/b"]
    assert got[-1] == ("error", 400, False)
    assert got.count(END_OF_MESSAGE) == 2


@pytest.mark.parametrize(
    "head",
    [
        # Request smuggling shapes (RFC 9112 6.1, 6.3).
        b"Content-Length: 4\r\nTransfer-Encoding: chunked",
        b"Transfer-Encoding: chunked\r\nContent-Length: 4",
        b"Content-Length: 4\r\nContent-Length: 5",
        b"Content-Length: 4, 4",
        b"Content-Length: +4",
        b"Content-Length: -1",
        b"Transfer-Encoding: gzip",
        b"Transfer-Encoding: gzip, chunked",
        b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked",
        b"Transfer-Encoding: chunked, identity",
        b"X: a\r\n folded",  # obs-fold
        b"X: a\nY: b",  # bare LF
        b"X : a",  # space before the colon
        b"X: a\x00b",
        # Control characters (RFC 9110 5.5; h11 let all but NUL through).
        b"X: a\x7fb",
        b"X: a\x1bb",
        b"Bad Name: a",
        b"Host: second",
    ],
)
def test_smuggling_and_malformed_heads_are_refused_with_400(head: bytes) -> None:
    request = b"POST / HTTP/1.1\r\nHost: t\r\n" + head + b"\r\n\r\n0\r\n\r\n"
    assert only_error(request) == ("error", 400, False)


@pytest.mark.parametrize(
    "request_",
    [
        b"GET / HTTP/1.1\r\n\r\n",  # HTTP/1.1 needs Host
        b"GET / HTTP/2.0\r\nHost: t\r\n\r\n",
        b"GET / HTTP/0.9\r\nHost: t\r\n\r\n",
        b"THIS IS NOT HTTP\r\n\r\n",
        b"\x00\x01\x02\xff garbage\r\n\r\n",
        b"GET /a b HTTP/1.1\r\nHost: t\r\n\r\n",
    ],
)
def test_bad_request_lines_and_missing_host_are_400(request_: bytes) -> None:
    assert only_error(request_) == ("error", 400, False)


def test_http_1_0_needs_no_host_and_does_not_keep_alive() -> None:
    for extra in (b"", b"Connection: keep-alive\r\n"):
        head = events(b"GET / HTTP/1.0\r\n" + extra + b"\r\n")[0]
        assert isinstance(head, RequestHead)
        assert (head.http_version, head.keep_alive) == ("1.0", False)


def test_connection_close_and_upgrade_end_keep_alive() -> None:
    closed = events(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")[0]
    assert isinstance(closed, RequestHead) and not closed.keep_alive
    # Asked to switch protocols: answered like any request, then nothing more is parsed.
    got = events(
        b"GET / HTTP/1.1\r\nHost: t\r\nConnection: upgrade\r\nUpgrade: h2c\r\n\r\n"
        b"GET /next HTTP/1.1\r\nHost: t\r\n\r\n"
    )
    assert len(got) == 2 and got[1] is END_OF_MESSAGE
    assert isinstance(got[0], RequestHead) and not got[0].keep_alive


def test_expect_100_continue_is_flagged_on_http_1_1_only() -> None:
    for version, expected in ((b"1.1", True), (b"1.0", False)):
        head = events(
            b"POST / HTTP/" + version + b"\r\nHost: t\r\nContent-Length: 2\r\n"
            b"Expect: 100-Continue\r\n\r\n"
        )[0]
        assert isinstance(head, RequestHead) and head.expect_continue is expected


def test_a_complete_head_is_not_bounded_here() -> None:
    # Measured by the ingress after parsing (routes.read_head's size), so that
    # a head arriving in one read is judged by its own bytes, not by the read.
    head = b"GET / HTTP/1.1\r\nHost: t\r\nX: " + b"a" * (2 * LIMIT) + b"\r\n\r\n"
    assert isinstance(events(head)[0], RequestHead)


def test_an_incomplete_head_over_the_limit_is_431() -> None:
    start = b"GET / HTTP/1.1\r\nHost: t\r\nX: "
    assert only_error(start + b"a" * LIMIT) == ("error", 431, False)
    # In small pieces: the same once their sum passes the limit, not before.
    parser = RequestParser(LIMIT)
    parser.receive(start)
    fed = len(start)
    while fed + 100 <= LIMIT:
        parser.receive(b"a" * 100)
        fed += 100
        assert parser.next_event() is NEED_DATA
    parser.receive(b"a" * 100)
    with pytest.raises(HttpProtocolError) as caught:
        parser.next_event()
    assert caught.value.status == 431


def test_a_body_after_a_complete_head_does_not_count_as_head() -> None:
    body = b"b" * (4 * LIMIT)
    got = events(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
    assert b"".join(e for e in got if isinstance(e, bytes)) == body


def test_close_between_requests_is_clean_and_mid_request_is_flagged() -> None:
    assert events(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n", b"")[-1] is CONNECTION_CLOSED
    assert events(b"") == [CONNECTION_CLOSED]
    assert only_error(b"GET / HTTP/1.1\r\nHo", b"") == ("error", 400, True)
    got = events(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 9\r\n\r\nabc", b"")
    assert got[-1] == ("error", 400, True)


def test_an_error_stays_the_answer_and_later_input_is_ignored() -> None:
    parser = RequestParser(LIMIT)
    parser.receive(b"NOT HTTP\r\n\r\n")
    parser.receive(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
    for _ in range(2):
        with pytest.raises(HttpProtocolError):
            parser.next_event()


def test_in_request_tracks_buffered_input() -> None:
    parser = RequestParser(LIMIT)
    assert not parser.in_request
    parser.receive(b"GET / HT")
    assert parser.in_request
    parser.receive(b"TP/1.1\r\nHost: t\r\n\r\n")
    assert isinstance(parser.next_event(), RequestHead)
    assert parser.next_event() is END_OF_MESSAGE
    assert not parser.in_request


# --- differential: the same framing as h11 ---------------------------------------------------


def _framed_by_us(data: bytes) -> list[tuple[bytes, bytes, bytes]]:
    """(method, target, body) of each complete request before any refusal."""
    parser = RequestParser(16 * 1024)
    parser.receive(data)
    parser.receive(b"")
    done: list[tuple[bytes, bytes, bytes]] = []
    head: RequestHead | None = None
    body = b""
    try:
        while True:
            event = parser.next_event()
            if event is NEED_DATA or event is CONNECTION_CLOSED:
                return done
            if isinstance(event, RequestHead):
                head, body = event, b""
            elif isinstance(event, bytes):
                body += event
            elif event is END_OF_MESSAGE and head is not None:
                done.append((head.method, head.target, body))
    except HttpProtocolError:
        return done


def _framed_by_h11(data: bytes) -> list[tuple[bytes, bytes, bytes]]:
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=16 * 1024)
    conn.receive_data(data)
    conn.receive_data(b"")
    done: list[tuple[bytes, bytes, bytes]] = []
    request: h11.Request | None = None
    body = b""
    try:
        for _ in range(64):
            event = conn.next_event()
            if type(event) is h11.Request:
                request, body = event, b""
            elif type(event) is h11.Data:
                body += event.data
            elif type(event) is h11.EndOfMessage and request is not None:
                done.append((request.method, request.target, body))
                conn.send(h11.Response(status_code=200, headers=[("Content-Length", "0")]))
                conn.send(h11.EndOfMessage())
                conn.start_next_cycle()
            else:
                break
    except (h11.RemoteProtocolError, h11.LocalProtocolError):
        pass
    return done


def test_framing_agrees_with_h11_on_mutated_requests() -> None:
    # Where both parsers deliver a request, it is the same request with the same
    # body: no input is framed differently (the root of request smuggling).
    # llhttp refuses more (unknown methods, control characters) and accepts a
    # few line-level oddities h11 refuses (blank lines between requests,
    # doubled spaces in the request line); neither changes any framing.
    target = targets()["http_head"]
    rng = random.Random(12)
    compared = 0
    for _ in range(3000):
        data = mutate(rng, rng.choice(target.seeds), target)
        ours, theirs = _framed_by_us(data), _framed_by_h11(data)
        both = min(len(ours), len(theirs))
        assert ours[:both] == theirs[:both], data
        compared += both
    assert compared > 300  # enough mutations stay parseable to compare
