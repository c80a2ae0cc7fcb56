"""The framed ingress protocol, sans-IO: byte-exact vectors, the two ends' rules.

The vectors were written by hand from the msgpack specification (and appear
in protocol/FRAMED.md), not produced by the code under test.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.errors import FrameTooLarge, MalformedFrame, ProtocolError
from protocol.frames import encode_frame
from protocol.ingress import (
    Call,
    GoAway,
    Hello,
    IngressProtocolError,
    Ping,
    Refused,
    Reply,
    ServerConnection,
    State,
    Welcome,
)
from protocol.ingress_client import ClientConnection

# bytes.fromhex skips spaces: each group is one msgpack item after the length.
HELLO_VECTOR = bytes.fromhex("00000010 82 a174 a568656c6c6f a570726f746f 01")
CALL_VECTOR = bytes.fromhex(
    "00000029 85 a174 a463616c6c a26964 07 a2666e a568656c6c6f"
    " a56576656e74 c4027b7d a46b696e64 a46a736f6e"
)
REPLY_VECTOR = bytes.fromhex(
    "00000045 86 a174 a57265706c79 a26964 07 a6737461747573 ccc8"
    " aa726571756573745f6964 a27231 a4626f6479 c4026869"
    " ac636f6e74656e745f74797065 aa746578742f706c61696e"
)


def test_vectors_encode_byte_exact() -> None:
    client = ClientConnection()
    assert client.hello() == HELLO_VECTOR
    assert encode_frame(Call(7, "hello", b"{}", "json").encode()) == CALL_VECTOR
    reply = Reply(7, 200, "r1", body=b"hi", content_type="text/plain")
    assert encode_frame(reply.encode()) == REPLY_VECTOR


def test_vectors_decode() -> None:
    server = ServerConnection()
    server.receive_data(HELLO_VECTOR + CALL_VECTOR)
    assert server.next_event() == Hello(proto=1, token=None)
    server.welcome()
    assert server.next_event() == Call(7, "hello", b"{}", "json")
    assert server.next_event() is None
    client = _open_client(max_inflight=8)
    client.inflight.add(7)
    client.receive_data(REPLY_VECTOR)
    got = client.next_event()
    assert got == Reply(7, 200, "r1", body=b"hi", content_type="text/plain")
    assert not client.inflight


def _open_client(max_inflight: int = 4, token: str | None = None) -> ClientConnection:
    client = ClientConnection(token=token)
    client.receive_data(encode_frame(Welcome(1, 1 << 20, max_inflight).encode()))
    assert isinstance(client.next_event(), Welcome)
    return client


def _pair(max_inflight: int = 4) -> tuple[ServerConnection, ClientConnection]:
    server = ServerConnection(max_inflight=max_inflight)
    client = ClientConnection(token="t0k")
    server.receive_data(client.hello())
    hello = server.next_event()
    assert hello == Hello(proto=1, token="t0k")
    client.receive_data(server.welcome())
    assert client.next_event() == Welcome(1, server.max_frame, max_inflight)
    return server, client


def test_calls_are_matched_by_id_in_completion_order() -> None:
    server, client = _pair()
    ids = []
    for n in range(3):
        call_id, frame = client.call("fn", f"{n}".encode(), "text")
        ids.append(call_id)
        server.receive_data(frame)
    calls = [server.next_event() for _ in range(3)]
    assert [c.id for c in calls if isinstance(c, Call)] == ids
    # The node answers the last one first.
    for call_id in reversed(ids):
        client.receive_data(server.reply(Reply(call_id, 200, f"r{call_id}", body=b"x")))
    order = [event.id for event in iter(client.next_event, None) if isinstance(event, Reply)]
    assert order == list(reversed(ids))
    assert not server.inflight and not client.inflight


def test_client_respects_max_inflight() -> None:
    _, client = _pair(max_inflight=2)
    client.call("fn", b"", "bytes")
    client.call("fn", b"", "bytes")
    assert not client.can_call
    with pytest.raises(IngressProtocolError, match="in flight"):
        client.call("fn", b"", "bytes")


def test_server_cuts_off_a_client_beyond_max_inflight() -> None:
    server, _ = _pair(max_inflight=1)
    server.receive_data(encode_frame(Call(1, "fn", b"").encode()))
    server.receive_data(encode_frame(Call(2, "fn", b"").encode()))
    assert isinstance(server.next_event(), Call)
    assert server.full
    with pytest.raises(IngressProtocolError, match="more than 1 calls in flight"):
        server.next_event()
    assert server.state is State.CLOSED


def test_duplicate_call_id_is_refused() -> None:
    server, _ = _pair()
    server.receive_data(encode_frame(Call(5, "fn", b"").encode()) * 2)
    server.next_event()
    with pytest.raises(IngressProtocolError, match="already in flight"):
        server.next_event()


def test_call_before_hello_is_refused() -> None:
    server = ServerConnection()
    server.receive_data(encode_frame(Call(1, "fn", b"").encode()))
    with pytest.raises(IngressProtocolError, match="expected hello"):
        server.next_event()


@pytest.mark.parametrize(
    ("frame", "match"),
    [
        ({"t": "call", "id": 1, "fn": "f", "event": "text", "kind": "bytes"}, "event"),
        ({"t": "call", "id": -1, "fn": "f", "event": b"", "kind": "bytes"}, "out of range"),
        ({"t": "call", "id": True, "fn": "f", "event": b"", "kind": "bytes"}, "id"),
        ({"t": "call", "id": 1, "fn": "f", "event": b"", "kind": "xml"}, "unknown kind"),
        ({"t": "call", "fn": "f", "event": b"", "kind": "bytes"}, "lacks required field 'id'"),
        (
            {"t": "call", "id": 1, "fn": "f", "event": b"", "kind": "bytes", "timeout_ms": 0},
            "timeout_ms",
        ),
        ({"t": "welcome"}, "unexpected 'welcome'"),
        # Each field mistyped or missing is named (the decoder's fast path takes
        # only exact types; the rest goes through the checks that name them).
        ({"t": "call", "id": 1, "event": b"", "kind": "bytes"}, "lacks required field 'fn'"),
        ({"t": "call", "id": 1, "fn": b"f", "event": b"", "kind": "bytes"}, "'fn' has type bytes"),
        ({"t": "call", "id": 1, "fn": "f", "kind": "bytes"}, "lacks required field 'event'"),
        ({"t": "call", "id": 1, "fn": "f", "event": b"", "kind": 1}, "'kind' has type int"),
        ({"t": "call", "id": 1.0, "fn": "f", "event": b"", "kind": "bytes"}, "'id' has type float"),
        (
            {"t": "call", "id": 1, "fn": "f", "event": b"", "kind": "bytes", "timeout_ms": True},
            "'timeout_ms' has type bool",
        ),
        (
            {"t": "call", "id": 1, "fn": "f", "event": b"", "kind": "bytes", "request_id": 5},
            "'request_id' has type int",
        ),
        (
            {"t": "call", "id": 1, "fn": "f", "event": b"", "kind": "bytes", "auth": "k"},
            "'auth' has type str",
        ),
        ({"t": 7}, "'t' has type int"),
    ],
)
def test_malformed_calls_break_the_connection(frame: dict[str, object], match: str) -> None:
    server, _ = _pair()
    server.receive_data(encode_frame(frame))
    with pytest.raises(ProtocolError, match=match):
        server.next_event()
    assert server.state is State.CLOSED


def test_a_hostile_request_id_is_dropped_not_echoed() -> None:
    server, _ = _pair()
    frame = Call(1, "fn", b"", request_id="x\n{evil}").encode()
    server.receive_data(encode_frame(frame))
    call = server.next_event()
    assert isinstance(call, Call) and call.request_id is None


def test_oversized_frame_is_refused_before_it_is_buffered() -> None:
    server = ServerConnection(max_frame=1024)
    server.receive_data((10_000_000).to_bytes(4, "big"))
    with pytest.raises(FrameTooLarge):
        server.next_event()


def test_refused_and_goaway_reach_the_client() -> None:
    server = ServerConnection()
    client = ClientConnection()
    server.receive_data(client.hello())
    server.next_event()
    client.receive_data(server.refuse("unauthorized", "a token is required"))
    assert client.next_event() == Refused("unauthorized", "a token is required")
    assert client.state is State.CLOSED and server.state is State.CLOSED

    server, client = _pair()
    client.receive_data(server.goaway("the node is draining"))
    assert client.next_event() == GoAway("the node is draining")
    assert client.going_away == "the node is draining"


def test_error_reply_round_trip() -> None:
    server, client = _pair()
    call_id, frame = client.call("fn", b"{}", "json", timeout_ms=50)
    server.receive_data(frame)
    call = server.next_event()
    assert isinstance(call, Call) and call.timeout_ms == 50
    err = Reply(call_id, 429, "rid", error_code="queue_full", error_message="full", retry_after_s=1)
    client.receive_data(server.reply(err))
    assert client.next_event() == err


def test_reply_to_unknown_call_is_a_node_bug() -> None:
    server, client = _pair()
    with pytest.raises(IngressProtocolError):
        server.reply(Reply(99, 200, "r"))
    client.receive_data(encode_frame(Reply(99, 200, "r").encode()))
    with pytest.raises(IngressProtocolError, match="unknown call id"):
        client.next_event()


def test_reply_ok_is_the_reply_frame_byte_exact() -> None:
    server = ServerConnection()
    server.inflight.add(7)
    assert server.reply_ok(7, "r1", b"hi", "text/plain") == REPLY_VECTOR
    assert not server.inflight
    with pytest.raises(IngressProtocolError, match="not in flight"):
        server.reply_ok(7, "r1", b"hi", "text/plain")  # answered already
    # A large body (packed by encode_frame, not the reused packer): the same bytes.
    big = b"x" * (256 * 1024)
    server.inflight.update({1, 2})
    expected = server.reply(Reply(1, 200, "r", body=big, content_type="a/b"))
    assert server.reply_ok(2, "r", big, "a/b") == expected.replace(b"\xa2id\x01", b"\xa2id\x02")


def test_reply_ok_refuses_a_frame_over_the_limit() -> None:
    server = ServerConnection(max_frame=1024)
    server.inflight.add(1)
    with pytest.raises(FrameTooLarge):
        server.reply_ok(1, "r", b"x" * 2000, "a/b")


def test_ping_is_answered_event() -> None:
    server, _ = _pair()
    server.receive_data(encode_frame({"t": "ping"}))
    assert server.next_event() == Ping()


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=512))
def test_garbage_never_escapes_as_anything_but_a_protocol_error(data: bytes) -> None:
    server, _ = _pair()
    server.receive_data(data)
    try:
        while server.next_event() is not None:
            pass
    except (ProtocolError, MalformedFrame):
        assert server.state is State.CLOSED
