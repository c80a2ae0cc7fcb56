"""Message validation and hostile input: every bad frame is a typed ProtocolError."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest
from delta_sim import NODE_ID, Sim, decode_all, scheduler_config
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.delta import (
    DeltaProtocolError,
    DeltaUsageError,
    FleetState,
    InvalidMessage,
    LimitExceeded,
    ResourceTooLarge,
    SchedulerSession,
    SnapshotMismatch,
    UnexpectedMessage,
)
from protocol.delta.decode import check_delta, decode_message
from protocol.delta.encode import assemble, encode_item
from protocol.delta.messages import MAX_ITEM_BYTES, Batch, Welcome
from protocol.errors import FrameTooLarge, MalformedFrame, ProtocolError
from protocol.frames import encode_frame


def established() -> tuple[Sim, SchedulerSession]:
    sim = Sim()
    sim.connect()
    sim.pump()
    assert sim.session is not None
    return sim, sim.session


def feed(session: SchedulerSession, data: bytes) -> None:
    session.receive_data(data, 0.0)
    while session.next_event() is not None:
        pass


def next_batch(sim: Sim, **fields: Any) -> bytes:
    frame = {"t": "batch", "seq": sim.fleet.records[NODE_ID].n2s_applied + 1, "ack": 0}
    frame.update(fields)
    return encode_frame(frame)


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (b"\xff\xff\xff\xff", FrameTooLarge),  # announced length beyond the limit
        (b"\x00\x00\x00\x03abc", MalformedFrame),  # not msgpack (trailing bytes)
        (b"\x00\x00\x00\x01\xc1", MalformedFrame),  # reserved msgpack byte
        (encode_frame({"t": 7}), InvalidMessage),
        (encode_frame({"t": "nope"}), InvalidMessage),
        (b"\x00\x00\x00\x03\x92\x01\x02", MalformedFrame),  # an array, not a map
    ],
)
def test_garbage_before_hello_is_a_typed_error(data: bytes, error: type) -> None:
    session = SchedulerSession(FleetState(scheduler_config()), 0.0)
    with pytest.raises(error):
        feed(session, data)
    with pytest.raises(error):  # poisoned: the connection must close
        session.next_event()


def test_invalid_message_is_also_a_malformed_frame() -> None:
    assert issubclass(InvalidMessage, MalformedFrame)
    assert issubclass(InvalidMessage, DeltaProtocolError)


@pytest.mark.parametrize(
    "fields",
    [
        {"deltas": [["function"]]},
        {"deltas": [["function", "f", 0, {}]]},  # version must be positive
        {"deltas": [["function", "f", True, {}]]},  # bool is not a version
        {"deltas": [["", "f", 1, {}]]},
        {"deltas": [["function", "x" * 2000, 1, {}]]},
        {"deltas": [["function", 5, 1, {}]]},
        {"deltas": "not a list"},
        {"results": [["c", "maybe", {}]]},
        {"results": [[1, "ok", {}]]},
        {"seq": True},
        {"ack": -1},
        {"digest": b"short", "count": 1},
        {"digest": b"x" * 16},  # count missing
    ],
)
def test_malformed_batch_fields_are_refused(fields: dict[str, Any]) -> None:
    sim, session = established()
    with pytest.raises(InvalidMessage):
        feed(session, next_batch(sim, **fields))
    assert decode_all(session.data_to_send())[-1]["t"] == "bye"


def test_snapshot_parts_must_be_upserts_in_order_and_match_their_end() -> None:
    sim, session = established()
    seq = sim.fleet.records[NODE_ID].n2s_applied + 1
    snap = {"t": "snap", "seq": seq, "ack": 0, "rev": 1, "part": 0, "last": False}
    with pytest.raises(InvalidMessage):
        feed(session, encode_frame({**snap, "items": [["f", "n", 1]]}))
    sim, session = established()
    with pytest.raises(UnexpectedMessage):
        feed(session, encode_frame({**snap, "part": 1}))
    sim, session = established()
    end = {**snap, "last": True, "count": 2, "items": [["f", "n", 1, {}]]}
    with pytest.raises(SnapshotMismatch):
        feed(session, encode_frame(end))
    assert sim.fleet.records[NODE_ID].awaiting_snapshot  # the next connection starts over


def test_view_size_is_bounded() -> None:
    sim = Sim(sched_cfg=scheduler_config(max_resources=2))
    sim.connect()
    sim.pump()
    for i in range(3):
        sim.node.queue_delta("instance", f"i{i}", {}, sim.now)
    sim.node.flush(sim.now)
    sim.pump()
    assert any(isinstance(e, LimitExceeded) for e in sim.errors)


def test_decoders_refuse_out_of_range_values() -> None:
    welcome = {
        "t": "welcome",
        "proto": 1,
        "scheduler_id": "s",
        "epoch": 1,
        "features": 0,
        "requires": 0,
        "heartbeat_interval": 5.0,
        "lease_ttl": 5.0,  # must exceed the heartbeat
        "mode": "resume",
        "resume_from": 1,
        "cmd_stream": "x",
        "cmd_mode": "reset",
        "cmd_from": 1,
        "max_frame": 1 << 20,
    }
    with pytest.raises(InvalidMessage, match="lease_ttl"):
        decode_message(welcome)
    with pytest.raises(InvalidMessage, match="mode"):
        decode_message({**welcome, "lease_ttl": 9.0, "mode": "guess"})
    with pytest.raises(InvalidMessage, match="max_frame"):
        decode_message({**welcome, "lease_ttl": 9.0, "max_frame": 1000})
    decoded = decode_message({**welcome, "lease_ttl": 9.0, "extra": {"future": True}})
    assert isinstance(decoded, Welcome) and decoded.lease_ttl == 9.0


def test_assembled_frames_are_plain_msgpack_maps() -> None:
    packer = msgpack.Packer(use_bin_type=True, autoreset=True)
    items = [encode_item(packer, ["function", f"f{i}", i + 1, {"m": i}], "x") for i in range(3)]
    frame = assemble([("t", "batch"), ("seq", 9), ("ack", 2)], [("deltas", items)], 1 << 20)
    (message,) = decode_all(frame)
    decoded = decode_message(message)
    assert isinstance(decoded, Batch) and decoded.seq == 9
    assert [check_delta(d)[:3] for d in decoded.deltas] == [
        ("function", f"f{i}", i + 1) for i in range(3)
    ]
    with pytest.raises(FrameTooLarge):
        assemble([("t", "batch")], [("deltas", items)], 10)


def test_encode_item_refuses_what_a_peer_would_refuse() -> None:
    packer = msgpack.Packer(use_bin_type=True, autoreset=True)
    with pytest.raises(DeltaUsageError, match="refused by the peer"):
        encode_item(packer, {1: "int key"}, "body")
    with pytest.raises(DeltaUsageError, match="not msgpack-encodable"):
        encode_item(packer, {"x": object()}, "body")
    with pytest.raises(ResourceTooLarge):
        encode_item(packer, b"x" * MAX_ITEM_BYTES, "body")
    assert packer.pack(1) == b"\x01"  # the packer is usable after a refusal


# --- fuzzing: whatever arrives, only typed errors come out --------------------------------------
# Each case starts from a *valid* frame for the current state and breaks one
# field (or one delta item), so the fuzz reaches the deep validation paths.

SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text(max_size=8)
    | st.binary(max_size=20)
)
VALUES = SCALARS | st.lists(SCALARS, max_size=5) | st.dictionaries(st.text(max_size=4), SCALARS)
KEYS = ["t", "seq", "ack", "deltas", "results", "digest", "count", "part", "last", "rev", "items"]


def scheduler_templates(sim: Sim) -> dict[str, dict[str, Any]]:
    seq = sim.fleet.records[NODE_ID].n2s_applied + 1
    return {
        "batch": {"t": "batch", "seq": seq, "ack": 0, "deltas": [["function", "f", 99, {}]]},
        "snap": {"t": "snap", "seq": seq, "ack": 0, "rev": 9, "part": 0, "last": True,
                 "count": 1, "items": [["function", "f", 99, {}]]},
        "hb": {"t": "hb", "seq": seq - 1, "ack": 0},
        "bye": {"t": "bye", "code": "x", "message": "y"},
    }  # fmt: skip


@settings(max_examples=400, deadline=None)
@given(
    template=st.sampled_from(["batch", "snap", "hb", "bye"]),
    key=st.sampled_from(KEYS),
    value=VALUES,
    item=st.lists(VALUES, max_size=5),
)
def test_broken_frames_to_a_scheduler_session(
    template: str, key: str, value: Any, item: list[Any]
) -> None:
    sim, session = established()
    for message in (
        {**scheduler_templates(sim)[template], key: value},
        {**scheduler_templates(sim)[template], "deltas": [item], "items": [item]},
    ):
        try:
            feed(session, encode_frame(message))
        except ProtocolError:
            return  # typed: the IO layer closes this link only


@settings(max_examples=400, deadline=None)
@given(
    template=st.sampled_from(["cmd", "hb", "resync"]),
    key=st.sampled_from([*KEYS, "epoch", "cmd_id", "kind", "body", "reason"]),
    value=VALUES,
)
def test_broken_frames_to_a_node(template: str, key: str, value: Any) -> None:
    sim, _ = established()
    st_ = sim.node.state
    templates: dict[str, dict[str, Any]] = {
        "cmd": {"t": "cmd", "seq": st_.cmd_applied + 1, "ack": 0, "epoch": 1, "cmd_id": "c",
                "kind": "drain", "body": {}},
        "hb": {"t": "hb", "seq": st_.cmd_applied, "ack": 0},
        "resync": {"t": "resync", "reason": "r"},
    }  # fmt: skip
    try:
        sim.node.receive_data(encode_frame({**templates[template], key: value}), sim.now)
        while sim.node.next_event() is not None:
            pass
    except ProtocolError:
        pass


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=200))
def test_random_bytes_to_a_fresh_session(data: bytes) -> None:
    session = SchedulerSession(FleetState(scheduler_config()), 0.0)
    try:
        feed(session, data)
    except ProtocolError:
        pass
