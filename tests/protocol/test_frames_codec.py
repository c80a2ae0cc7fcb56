"""protocol.frames and protocol.link: framing, limits and message validation."""

from __future__ import annotations

import struct

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol.errors import FrameTooLarge, MalformedFrame
from protocol.frames import SMALL_PAYLOAD, FrameDecoder, FrameEncoder, encode_frame
from protocol.link import Hello, Pull, Request, Result, message_type


def test_round_trip_split_at_every_byte() -> None:
    frames = encode_frame({"t": "a", "x": 1}) + encode_frame({"t": "b", "y": b"\x00" * 10})
    for cut in range(len(frames) + 1):
        dec = FrameDecoder()
        dec.receive_data(frames[:cut])
        got = list(dec.frames())
        dec.receive_data(frames[cut:])
        got += list(dec.frames())
        assert got == [{"t": "a", "x": 1}, {"t": "b", "y": b"\x00" * 10}]
        assert dec.buffered == 0


INT64 = st.integers(min_value=-(2**63), max_value=2**64 - 1)


@given(st.dictionaries(st.text(max_size=8), st.one_of(INT64, st.binary(), st.text()), max_size=8))
def test_any_map_round_trips(msg: dict) -> None:
    dec = FrameDecoder()
    dec.receive_data(encode_frame(msg))
    assert dec.next_frame() == msg


def test_oversized_length_refused_before_buffering_the_body() -> None:
    dec = FrameDecoder(max_frame=1024)
    dec.receive_data(struct.pack(">I", 1 << 30))
    with pytest.raises(FrameTooLarge, match="1073741824 bytes; the limit is 1024"):
        dec.next_frame()
    # The stream is poisoned: later data is refused too.
    with pytest.raises(FrameTooLarge):
        dec.receive_data(b"x")


def test_encoder_refuses_what_the_peer_would_refuse() -> None:
    with pytest.raises(FrameTooLarge):
        encode_frame({"b": b"x" * 2000}, max_frame=1000)
    with pytest.raises(MalformedFrame, match="cannot be encoded"):
        encode_frame({"n": 2**64})
    with pytest.raises(MalformedFrame, match="cannot be encoded"):
        encode_frame({"o": object()})


@given(st.dictionaries(st.text(max_size=8), st.one_of(INT64, st.binary(), st.text()), max_size=8))
def test_frame_encoder_makes_the_bytes_encode_frame_makes(msg: dict) -> None:
    encoder = FrameEncoder()
    assert encoder.encode(msg) == encode_frame(msg)
    assert encoder.encode(msg) == encode_frame(msg)  # the reused packer starts clean


def test_frame_encoder_refuses_as_encode_frame_and_recovers() -> None:
    encoder = FrameEncoder()
    with pytest.raises(FrameTooLarge):
        encoder.encode({"b": b"x" * 2000}, max_frame=1000)
    with pytest.raises(MalformedFrame, match="cannot be encoded"):
        encoder.encode({"a": "half packed", "n": 2**64})
    with pytest.raises(MalformedFrame, match="cannot be encoded"):
        encoder.encode({"o": object()})
    # Nothing of a refused message is left in the packer.
    assert encoder.encode({"t": "pull", "n": 1}) == encode_frame({"t": "pull", "n": 1})
    big = {"event": b"x" * (SMALL_PAYLOAD + 1)}
    assert encoder.encode(big, payload_len=SMALL_PAYLOAD + 1) == encode_frame(big)
    with pytest.raises(FrameTooLarge):
        encoder.encode(big, max_frame=SMALL_PAYLOAD, payload_len=SMALL_PAYLOAD + 1)


@pytest.mark.parametrize(
    ("body", "match"),
    [
        (b"\xc1", "not valid msgpack"),
        (msgpack.packb([1, 2]), "must be a msgpack map, got list"),
        (msgpack.packb({1: 2}), "not valid msgpack"),
        (msgpack.packb({"a": 1}) + b"junk", "not valid msgpack"),
    ],
)
def test_malformed_frames(body: bytes, match: str) -> None:
    dec = FrameDecoder()
    dec.receive_data(struct.pack(">I", len(body)) + body)
    with pytest.raises(MalformedFrame, match=match):
        dec.next_frame()


def test_link_messages_round_trip_and_validate() -> None:
    hello = Hello(1, "f-1", "tok", 42)
    assert Hello.decode(hello.encode()) == hello
    req = Request("r1", b"{}", "json", 100)
    assert Request.decode(req.encode()) == req
    ok = Result("r1", ok=True, body=b"1", kind="json")
    assert Result.decode(ok.encode()) == ok
    assert message_type(Pull(1).encode()) == "pull"
    with pytest.raises(MalformedFrame, match="lacks required field 'token'"):
        Hello.decode({"t": "hello", "proto": 1, "instance_id": "x", "pid": 1})
    with pytest.raises(MalformedFrame, match="field 'pid' has type str"):
        Hello.decode({"t": "hello", "proto": 1, "instance_id": "x", "token": "t", "pid": "1"})
    with pytest.raises(MalformedFrame, match=r"allowed 1\.\.1024"):
        Pull.decode({"t": "pull", "n": 0})
    with pytest.raises(MalformedFrame, match="unknown kind"):
        Result.decode({"t": "result", "id": "r", "ok": True, "body": b"", "kind": "xml"})
    with pytest.raises(MalformedFrame, match="error field must be a map"):
        Result.decode({"t": "result", "id": "r", "ok": False, "error": "boom"})
    # Unknown fields are ignored (forward compatibility).
    assert Pull.decode({"t": "pull", "n": 2, "future": True}) == Pull(2)


_RESULT: dict[str, object] = {"t": "result", "id": "r", "ok": True, "body": b"1", "kind": "json"}


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"id": None}, "lacks required field 'id'"),
        ({"id": b"r"}, "field 'id' has type bytes"),
        ({"ok": 1}, "field 'ok' has type int"),
        ({"ok": None}, "lacks required field 'ok'"),
        ({"body": "1"}, "field 'body' has type str"),
        ({"kind": None}, "lacks required field 'kind'"),
        ({"kind": 7}, "field 'kind' has type int"),
    ],
)
def test_a_mistyped_result_field_is_refused_by_name(change: dict[str, object], match: str) -> None:
    # The hot path takes exact types as they are; everything else must still be named.
    frame = {k: v for k, v in {**_RESULT, **change}.items() if v is not None}
    with pytest.raises(MalformedFrame, match=match):
        Result.decode(frame)


@pytest.mark.parametrize(
    ("frame", "match"),
    [
        ({"t": "pull", "n": True}, "field 'n' has type bool"),
        ({"t": "pull", "n": "2"}, "field 'n' has type str"),
        ({"t": "pull"}, "lacks required field 'n'"),
        ({"n": 1}, "lacks required field 't'"),
        ({"t": b"pull", "n": 1}, "field 't' has type bytes"),
    ],
)
def test_a_mistyped_pull_or_type_is_refused_by_name(frame: dict[str, object], match: str) -> None:
    with pytest.raises(MalformedFrame, match=match):
        Pull.decode(frame) if "t" in frame and type(frame["t"]) is str else message_type(frame)


def _nested(levels: int) -> dict[str, object]:
    """A map whose deepest container sits ``levels`` deep (the map itself is level 1)."""
    inner: dict[str, object] = {"a": None}
    for _ in range(levels - 3):
        inner = {"a": inner}
    return {"a": [inner]}  # a list on the way counts as a level too


def test_nesting_limit_is_exact() -> None:
    from protocol.frames import MAX_NESTING

    ok = FrameDecoder()
    ok.receive_data(encode_frame(_nested(MAX_NESTING)))
    assert ok.next_frame() == _nested(MAX_NESTING)
    deep = FrameDecoder()
    deep.receive_data(encode_frame(_nested(MAX_NESTING + 1)))
    with pytest.raises(MalformedFrame, match="nests deeper"):
        deep.next_frame()


def test_request_message_is_what_request_encodes() -> None:
    from protocol.link import pull_count, request_message

    req = Request("r1", b"{}", "json", 100, trace="00-" + "1" * 32 + "-" + "2" * 16 + "-01")
    assert request_message("r1", b"{}", "json", 100, None, req.trace) == req.encode()
    assert Request.decode(request_message("r2", b"x", "bytes", 5)) == Request(
        "r2", b"x", "bytes", 5
    )
    assert pull_count({"t": "pull", "n": 3}) == 3
    with pytest.raises(MalformedFrame, match=r"allowed 1\.\.1024"):
        pull_count({"t": "pull", "n": 1025})
    with pytest.raises(MalformedFrame, match="field 'n' has type bool"):
        pull_count({"t": "pull", "n": True})  # a bool is an int subclass, not a count
