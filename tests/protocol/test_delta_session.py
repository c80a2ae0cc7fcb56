"""Node and scheduler machines paired through the in-memory wire: one behaviour per test."""

from __future__ import annotations

from typing import Any

import pytest
from delta_sim import NODE_ID, Sim, decode_all, node_config, scheduler_config

from protocol.delta import (
    PROTO_VERSION,
    AckOutOfRange,
    CloseConnection,
    CommandBacklogFull,
    CommandCompleted,
    CommandReceived,
    CommandRefused,
    Connected,
    DigestMismatch,
    FleetState,
    LeaseExpired,
    LeaseGranted,
    NodeConfig,
    NodeConnected,
    NodeSession,
    SchedulerSession,
    SequenceGap,
    SnapshotApplied,
    SnapshotSent,
    StaleEpoch,
    UnexpectedMessage,
    UnknownCommand,
    UnsupportedFeature,
    UnsupportedVersion,
)
from protocol.frames import encode_frame


def connected_sim(**kwargs: Any) -> Sim:
    sim = Sim(**kwargs)
    sim.connect()
    sim.pump()
    assert sim.node.established
    return sim


def of(events: list[Any], cls: type) -> list[Any]:
    return [e for e in events if isinstance(e, cls)]


def feed_node(sim: Sim, fields: dict[str, Any]) -> list[Any]:
    """Deliver one crafted frame to the node and return the events it caused."""
    sim.node.receive_data(encode_frame(fields), sim.now)
    events = []
    while (event := sim.node.next_event()) is not None:
        events.append(event)
    return events


def cmd_frame(sim: Sim, seq_offset: int = 1, **fields: Any) -> dict[str, Any]:
    frame = {
        "t": "cmd",
        "seq": sim.node.state.cmd_applied + seq_offset,
        "ack": 0,
        "epoch": sim.fleet.config.epoch,
        "cmd_id": "c-1",
        "kind": "drain",
        "body": {},
    }
    frame.update(fields)
    return frame


def results_in(data: bytes) -> list[list[Any]]:
    return [r for m in decode_all(data) if m["t"] == "batch" for r in m.get("results", [])]


# --- handshake, resume, snapshot -------------------------------------------------------


def test_first_connection_snapshots_then_reconnect_resumes() -> None:
    sim = connected_sim()
    sim.change("function", "f", {"mem": 128})
    sim.settle(1)
    sim.disconnect("cut")
    sim.change("function", "g", {"mem": 256})  # while disconnected: coalesced, not sent
    assert sim.node.state.batch
    sim.settle(2)
    modes = [(e.mode, e.cmd_mode) for e in of(sim.node_events, Connected)]
    assert modes == [("snapshot", "reset"), ("resume", "resume")]
    assert len(of(sim.node_events, SnapshotSent)) == 1
    sim.assert_converged()


def test_node_replay_overflow_forces_snapshot() -> None:
    sim = connected_sim(node_cfg=node_config(replay_max_frames=2, max_batch_items=1))
    sim.settle(1)
    for i in range(3):  # three frames, all lost in flight
        sim.node.queue_delta("instance", f"i{i}", {"n": i}, sim.now)
    assert len(decode_all(sim.node.data_to_send())) == 3
    sim.disconnect("cut")
    sim.settle(2)
    assert sim.node.state.replay.evicted > 0
    assert of(sim.node_events, Connected)[-1].mode == "snapshot"
    sim.assert_converged()


def test_lost_frames_within_replay_buffer_are_replayed() -> None:
    sim = connected_sim(node_cfg=node_config(max_batch_items=1))
    sim.settle(1)
    for i in range(3):
        sim.node.queue_delta("instance", f"i{i}", {"n": i}, sim.now)
    sim.node.data_to_send()  # lost in flight
    sim.disconnect("cut")
    sim.settle(2)
    assert of(sim.node_events, Connected)[-1].mode == "resume"
    assert len(of(sim.node_events, SnapshotSent)) == 1  # only the first connection's
    sim.assert_converged()


def test_scheduler_replay_overflow_resets_command_stream_and_redelivers() -> None:
    sim = connected_sim(sched_cfg=scheduler_config(replay_max_frames=2))
    for i in range(5):
        cmd_id = sim.fleet.issue_command(NODE_ID, "drain", {"n": i})
        sim.issued[cmd_id] = ("drain", {"n": i})
    assert sim.session is not None
    assert len(decode_all(sim.session.data_to_send())) == 5  # all lost in flight
    sim.disconnect("cut")
    sim.settle(2)
    assert of(sim.node_events, Connected)[-1].cmd_mode == "reset"
    sim.assert_converged()


def test_new_boot_replaces_view_and_redelivers_pending_commands() -> None:
    sim = connected_sim()
    sim.change("function", "old", {"mem": 1})
    sim.settle(1)
    cmd_id = sim.issue("drain", {})
    assert sim.running  # delivered; the daemon dies before finishing it
    sim.running.clear()
    sim.disconnect("reboot")
    sim.node = NodeSession(node_config(boot_id="boot-2"))
    sim.executed.clear()  # a new boot has no memory of executions
    sim.change("function", "new", {"mem": 2})
    sim.settle(2)
    assert of(sim.sched_events, NodeConnected)[-1].mode == "snapshot"
    assert sim.scheduler_view() == {("function", "new"): (1, {"mem": 2})}
    assert sim.answered.get(cmd_id) == "ok"
    sim.assert_converged()


# --- commands: exactly-once, fencing, window ---------------------------------------------


def test_redelivered_command_is_answered_from_the_result_table() -> None:
    sim = connected_sim()
    events = feed_node(sim, cmd_frame(sim, cmd_id="x"))
    assert of(events, CommandReceived) == [CommandReceived("x", "drain", {}, 1)]
    sim.node.complete_command("x", {"drained": True}, sim.now)
    sim.node.flush(sim.now)
    assert results_in(sim.node.data_to_send()) == [["x", "ok", {"drained": True}]]
    assert feed_node(sim, cmd_frame(sim, seq_offset=0, cmd_id="x")) == []  # same seq: dup
    assert sim.node.data_to_send() == b""
    assert feed_node(sim, cmd_frame(sim, cmd_id="x")) == []  # new seq, same cmd_id
    sim.node.flush(sim.now)
    assert results_in(sim.node.data_to_send()) == [["x", "ok", {"drained": True}]]


def test_command_is_executed_once_across_failover() -> None:
    sim = connected_sim()
    cmd_id = sim.issue("deploy_function", {"name": "f", "image": "sha256:1"})
    sim.settle(1)
    assert sim.answered == {cmd_id: "ok"}
    sim.failover()  # the new leader re-issues cmd_id
    sim.settle(2)
    assert sim.executed[cmd_id] == 1
    assert sim.answered == {cmd_id: "ok"}
    sim.assert_converged()


def test_welcome_with_lower_epoch_is_refused_by_the_node() -> None:
    sim = connected_sim(sched_cfg=scheduler_config(epoch=5))
    sim.disconnect("cut")
    sim.node.connect(sim.now)
    sim.node.data_to_send()
    st = sim.node.state
    welcome = {
        "t": "welcome",
        "proto": PROTO_VERSION,
        "scheduler_id": "old",
        "epoch": 4,
        "features": 1,
        "requires": 0,
        "heartbeat_interval": 1.0,
        "lease_ttl": 5.0,
        "mode": "resume",
        "resume_from": st.replay.next_seq,
        "cmd_stream": "x",
        "cmd_mode": "reset",
        "cmd_from": 1,
        "max_frame": 1 << 22,
    }
    with pytest.raises(StaleEpoch):
        feed_node(sim, welcome)
    assert decode_all(sim.node.data_to_send())[0]["code"] == "stale_epoch"
    assert st.highest_epoch == 5 and st.cmd_stream != "x"


def test_deposed_scheduler_is_fenced_by_the_nodes_hello() -> None:
    sim = connected_sim()
    old = sim.fleet
    sim.failover()
    sim.settle(1)
    sim.connect(old)
    sim.pump()
    assert isinstance(sim.errors[-1], StaleEpoch)
    assert not sim.connected


def test_command_with_lower_epoch_is_refused_not_executed() -> None:
    sim = connected_sim(sched_cfg=scheduler_config(epoch=5))
    events = feed_node(sim, cmd_frame(sim, epoch=4, cmd_id="stale"))
    assert [type(e) for e in events] == [CommandRefused]
    sim.node.flush(sim.now)
    assert results_in(sim.node.data_to_send()) == [["stale", "refused", {"reason": "stale_epoch"}]]
    # Not remembered: the current leader may still deliver the same id.
    events = feed_node(sim, cmd_frame(sim, epoch=5, cmd_id="stale"))
    assert of(events, CommandReceived)


def test_unknown_command_kind_is_answered_unsupported() -> None:
    sim = connected_sim()
    cmd_id = sim.issue("reboot_host", {})
    sim.settle(1)
    assert sim.answered == {cmd_id: "unsupported"}
    assert sim.executed == {}


def test_command_window_limits_commands_in_flight() -> None:
    sim = connected_sim(node_cfg=node_config(max_inflight=2))
    for i in range(5):
        sim.issue("drain", {"n": i})
    assert len(sim.running) == 2
    sim.complete_all()
    assert not sim.running
    sim.advance(0.1)  # results leave with the next batch; two more commands come
    assert len(sim.running) == 2
    sim.settle(1)
    sim.assert_converged()


def test_command_backlog_is_bounded() -> None:
    fleet = FleetState(scheduler_config(max_pending=3))
    for i in range(3):
        fleet.issue_command(NODE_ID, "drain", {"n": i})
    with pytest.raises(CommandBacklogFull):
        fleet.issue_command(NODE_ID, "drain", {})
    fleet.issue_command(NODE_ID, "drain", {}, cmd_id=fleet.pending_commands(NODE_ID)[0])  # no-op
    assert len(fleet.pending_commands(NODE_ID)) == 3


def test_complete_command_requires_a_running_command() -> None:
    sim = connected_sim()
    with pytest.raises(UnknownCommand):
        sim.node.complete_command("never", {}, sim.now)
    sim.issue("drain", {})
    sim.complete_all()
    cmd_id = next(iter(sim.issued))
    with pytest.raises(UnknownCommand):
        sim.node.complete_command(cmd_id, {}, sim.now)


# --- anti-entropy, lease, timeouts ---------------------------------------------------------


def test_digest_mismatch_triggers_resync_and_repairs_the_view() -> None:
    sim = connected_sim()
    sim.change("function", "f", {"mem": 1})
    sim.settle(1)
    view = sim.fleet.view(NODE_ID)
    assert view is not None
    view.upsert("health", "ghost", 1 << 40, {})  # the scheduler's copy rots
    sim.settle(3)
    assert of(sim.sched_events, DigestMismatch)
    assert [e.reason for e in of(sim.node_events, SnapshotSent)][-1].startswith("resync")
    assert ("health", "ghost") not in sim.scheduler_view()
    sim.assert_converged()


def test_lease_expires_without_scheduler_and_returns_with_it() -> None:
    sim = connected_sim()
    assert sim.node.lease_held and of(sim.node_events, LeaseGranted)
    sim.disconnect("cut")
    sim.reconnect_at = None  # stay away
    while sim.now < 6:
        sim.advance(0.5)
    assert not sim.node.lease_held
    assert len(of(sim.node_events, LeaseExpired)) == 1
    sim.change("instance", "i1", {"state": "busy"})  # static stability: keep reporting
    sim.reconnect_at = sim.now
    sim.advance(0.1)
    assert sim.node.lease_held and len(of(sim.node_events, LeaseGranted)) == 2
    sim.settle(1)
    sim.assert_converged()


def test_silent_scheduler_closes_the_link_before_the_lease_ends() -> None:
    sim = connected_sim()
    sim.blackhole_to_node = True
    while sim.connected:
        sim.advance(0.25)
    assert sim.closes == ["node: link_timeout"]
    assert sim.node.lease_held  # 3 heartbeats < lease_ttl: time to fail over first
    assert sim.fleet.expire(sim.now + 10) == [NODE_ID]


def test_handshake_timeouts_on_both_sides() -> None:
    node = NodeSession(node_config())
    node.connect(0.0)
    node.tick(2.9)
    assert node.next_event() is None and node.next_deadline() == 3.0
    node.tick(3.0)
    assert node.next_event() == CloseConnection(
        "no welcome within handshake_timeout", "handshake_timeout"
    )
    session = SchedulerSession(FleetState(scheduler_config()), 0.0)
    session.tick(3.0)
    assert isinstance(session.next_event(), CloseConnection)


def test_newer_connection_of_a_node_supersedes_the_old_one() -> None:
    sim = connected_sim()
    old = sim.session
    assert old is not None
    other = NodeSession(sim.node_cfg, state=sim.node.state)
    other.connect(sim.now)
    newer = SchedulerSession(sim.fleet, sim.now)
    newer.receive_data(other.data_to_send(), sim.now)
    assert isinstance(newer.next_event(), NodeConnected)
    assert old.next_event() == CloseConnection(
        "a newer connection of this node took over", "superseded"
    )
    record = sim.fleet.records[NODE_ID]
    assert record.session is newer
    sim.fleet.issue_command(NODE_ID, "drain", {})
    assert old.data_to_send().count(b"drain") == 0


# --- protocol violations by a (buggy) peer ---------------------------------------------------


def test_command_seq_gap_is_never_skipped() -> None:
    sim = connected_sim()
    with pytest.raises(SequenceGap):
        feed_node(sim, cmd_frame(sim, seq_offset=2))
    assert decode_all(sim.node.data_to_send())[0]["code"] == "sequence_gap"


def test_heartbeat_progress_mark_reveals_tail_loss() -> None:
    sim = connected_sim()
    applied = sim.node.state.cmd_applied
    with pytest.raises(SequenceGap):
        feed_node(sim, {"t": "hb", "seq": applied + 1, "ack": 0})


def test_ack_of_unsent_frame_is_refused() -> None:
    sim = connected_sim()
    with pytest.raises(AckOutOfRange):
        feed_node(sim, cmd_frame(sim, ack=10_000))


def test_node_batch_seq_gap_is_refused_by_scheduler() -> None:
    sim = connected_sim()
    session = sim.session
    assert session is not None
    seq = sim.fleet.records[NODE_ID].n2s_applied + 2
    session.receive_data(encode_frame({"t": "batch", "seq": seq, "ack": 0}), sim.now)
    with pytest.raises(SequenceGap):
        session.next_event()


def test_batch_before_snapshot_is_unexpected() -> None:
    node = NodeSession(node_config())
    node.connect(0.0)
    session = SchedulerSession(FleetState(scheduler_config()), 0.0)
    session.receive_data(node.data_to_send(), 0.0)
    assert isinstance(session.next_event(), NodeConnected)
    session.receive_data(encode_frame({"t": "batch", "seq": 1, "ack": 0}), 0.0)
    with pytest.raises(UnexpectedMessage):
        session.next_event()


def hello(**fields: Any) -> dict[str, Any]:
    base = {
        "t": "hello",
        "proto": PROTO_VERSION,
        "node_id": "n",
        "boot_id": "b",
        "features": 1,
        "requires": 0,
        "next_seq": 1,
        "oldest_seq": 1,
        "cmd_stream": "",
        "cmd_acked": 0,
        "epoch": 0,
        "max_inflight": 8,
        "max_frame": 1 << 20,
        "some_future_field": [1, 2, 3],  # unknown fields are ignored
    }
    base.update(fields)
    return base


@pytest.mark.parametrize(
    ("fields", "error"),
    [
        ({"proto": PROTO_VERSION + 1}, UnsupportedVersion),
        ({"requires": 1 << 20}, UnsupportedFeature),
        ({"epoch": 99}, StaleEpoch),
    ],
)
def test_scheduler_refuses_incompatible_hello(fields: dict[str, Any], error: type) -> None:
    session = SchedulerSession(FleetState(scheduler_config()), 0.0)
    session.receive_data(encode_frame(hello(**fields)), 0.0)
    with pytest.raises(error):
        session.next_event()
    assert decode_all(session.data_to_send())[0]["t"] == "bye"


def test_scheduler_accepts_hello_with_unknown_optional_features_and_fields() -> None:
    session = SchedulerSession(FleetState(scheduler_config()), 0.0)
    session.receive_data(encode_frame(hello(features=0xFFFF)), 0.0)
    assert isinstance(session.next_event(), NodeConnected)
    welcome = decode_all(session.data_to_send())[0]
    assert welcome["t"] == "welcome" and welcome["mode"] == "snapshot"


def test_node_refuses_welcome_requiring_unknown_feature() -> None:
    node = NodeSession(node_config())
    node.connect(0.0)
    session = SchedulerSession(FleetState(scheduler_config(requires=1 << 9)), 0.0)
    session.receive_data(node.data_to_send(), 0.0)
    session.next_event()
    node.receive_data(session.data_to_send(), 0.0)
    with pytest.raises(UnsupportedFeature):
        node.next_event()


def test_digest_feature_off_on_either_side_still_converges() -> None:
    sim = connected_sim(node_cfg=node_config(features=0))
    sim.change("function", "f", {"mem": 1})
    sim.settle(2)
    sim.assert_converged()
    sim.node.queue_delta("function", "g", {"mem": 2}, sim.now)
    sim.node.flush(sim.now)
    batches = decode_all(sim.node.data_to_send())
    assert batches and all("digest" not in m for m in batches)


# --- scale ------------------------------------------------------------------------------------


def test_one_fleet_holds_thousands_of_node_sessions() -> None:
    fleet = FleetState(scheduler_config())
    pairs = []
    for i in range(2000):
        node = NodeSession(NodeConfig(node_id=f"n{i}", boot_id="b"))
        session = SchedulerSession(fleet, 0.0)
        node.connect(0.0)
        pairs.append((node, session))
    for step in range(3):  # handshake, snapshot, one batch each
        for i, (node, session) in enumerate(pairs):
            if step == 1:
                node.queue_delta("capacity", "node", {"cpu": i}, 0.0)
                node.flush(0.0)
            session.receive_data(node.data_to_send(), 0.0)
            while session.next_event() is not None:
                pass
            node.receive_data(session.data_to_send(), 0.0)
            while node.next_event() is not None:
                pass
    for i in (0, 999, 1999):
        fleet.issue_command(f"n{i}", "drain", {})
        node, session = pairs[i]
        node.receive_data(session.data_to_send(), 0.0)
        assert isinstance(node.next_event(), CommandReceived)
    assert len(fleet.records) == 2000
    for i in range(len(pairs)):
        view = fleet.view(f"n{i}")
        assert view is not None and view.get("capacity", "node") == (1, {"cpu": i})


def test_command_results_reach_the_scheduler_as_events() -> None:
    sim = connected_sim()
    cmd_id = sim.issue("set_quota", {"memory_mb": 512})
    sim.complete_all()
    sim.settle(0.2)
    done = of(sim.sched_events, CommandCompleted)
    assert done == [CommandCompleted(NODE_ID, cmd_id, "ok", {"done": "set_quota"})]
    assert of(sim.sched_events, SnapshotApplied)
