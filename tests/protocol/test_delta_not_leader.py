"""A standby's ``bye not_leader`` with the leader's address: decoded, surfaced, followed."""

from __future__ import annotations

import random

import msgpack

from protocol.delta import NodeConfig, NodeSession, SchedulerAddressRotation
from protocol.delta.encode import encode_bye
from protocol.delta.events import CloseConnection


def test_the_node_surfaces_the_leader_hint_of_a_bye() -> None:
    node = NodeSession(NodeConfig(node_id="n", boot_id="b"))
    node.connect(0.0)
    node.data_to_send()
    node.receive_data(encode_bye("not_leader", "standby", "10.0.0.2:7000"), 0.1)
    events = []
    while (e := node.next_event()) is not None:
        events.append(e)
    closes = [e for e in events if isinstance(e, CloseConnection)]
    assert closes and closes[0].code == "not_leader" and closes[0].leader == "10.0.0.2:7000"


def test_a_bye_without_a_hint_or_with_a_bad_one_is_still_a_bye() -> None:
    for extra in ({}, {"leader": 7}, {"leader": "x" * 300}):
        frame = msgpack.packb({"t": "bye", "code": "not_leader", "message": "m", **extra})
        node = NodeSession(NodeConfig(node_id="n", boot_id="b"))
        node.connect(0.0)
        node.receive_data(len(frame).to_bytes(4, "big") + frame, 0.1)
        close = node.next_event()
        assert isinstance(close, CloseConnection) and close.leader is None


def test_rotation_prefers_the_named_leader_and_caps_the_wait() -> None:
    r = SchedulerAddressRotation(["a", "b", "c"], rng=random.Random(1), base_delay=0.1)
    assert not r.prefer("zzz")  # not configured: ignored
    assert r.prefer("c") and r.current() == "c"
    for _ in range(30):  # many rounds of failures: the ceiling stops at the 5 s cap
        r.failed(r.current(), 0.0)
    assert r.ceiling() == 5.0
    assert r.failed(r.current(), 0.0, cap=1.0) <= 1.0
