"""Node-side batching: coalescing, size/delay bounds, frame budgets, local API errors."""

from __future__ import annotations

from typing import Any

import pytest
from delta_sim import NODE_ID, Sim, decode_all, node_config

from protocol.delta import DeltaUsageError, ResourceTooLarge, TooManyResources


def settled(**kwargs: Any) -> Sim:
    sim = Sim(**kwargs)
    sim.connect()
    sim.settle(0.5)
    sim.node.data_to_send()
    return sim


def batches(data: bytes) -> list[dict[str, Any]]:
    return [m for m in decode_all(data) if m["t"] == "batch"]


def test_updates_of_one_resource_coalesce_last_wins() -> None:
    sim = settled()
    for i in range(1000):
        sim.node.queue_delta("instance", "i1", {"n": i}, sim.now)
    sim.node.flush(sim.now)
    (batch,) = batches(sim.node.data_to_send())
    assert batch["deltas"] == [["instance", "i1", 1000, {"n": 999}]]


def test_thousands_of_changes_make_few_frames() -> None:
    sim = settled()
    for i in range(3000):
        sim.node.queue_delta("instance", f"i{i}", {"n": i}, sim.now)
    sim.node.flush(sim.now)
    frames = batches(sim.node.data_to_send())
    assert [len(f["deltas"]) for f in frames] == [1024, 1024, 952]


def test_frames_respect_the_byte_budget() -> None:
    sim = settled()
    for i in range(5):
        sim.node.queue_delta("image", f"img{i}", {"blob": b"x" * 100_000}, sim.now)
    sim.node.flush(sim.now)
    data = sim.node.data_to_send()
    frames = batches(data)
    assert len(frames) >= 2 and sum(len(f["deltas"]) for f in frames) == 5
    assert len(data) <= len(frames) * (sim.node_cfg.max_batch_bytes + 1024)


def test_a_single_change_waits_at_most_max_batch_delay() -> None:
    sim = settled()
    start = sim.now
    sim.node.queue_delta("health", "disk", {"ok": True}, start)
    assert sim.node.next_deadline() == pytest.approx(start + 0.05)
    sim.node.tick(start + 0.04)
    assert batches(sim.node.data_to_send()) == []
    sim.node.tick(start + 0.05)
    assert len(batches(sim.node.data_to_send())) == 1


def test_nothing_is_framed_while_disconnected() -> None:
    sim = settled()
    sim.disconnect("cut")
    sim.reconnect_at = None
    next_seq = sim.node.state.replay.next_seq
    for i in range(50):
        sim.node.queue_delta("instance", f"i{i % 5}", {"n": i}, sim.now)
    sim.advance(1.0)
    assert sim.node.state.replay.next_seq == next_seq
    assert len(sim.node.state.batch) == 5
    sim.reconnect_at = sim.now
    sim.settle(1)
    sim.assert_converged()


def test_added_and_removed_in_one_batch_sends_only_the_removal() -> None:
    sim = settled()
    sim.node.queue_delta("instance", "short", {}, sim.now)
    assert sim.node.queue_removal("instance", "short", sim.now) == sim.node.state.revision
    assert sim.node.queue_removal("instance", "never", sim.now) is None
    sim.node.flush(sim.now)
    (batch,) = batches(sim.node.data_to_send())
    assert [len(item) for item in batch["deltas"]] == [3]


def test_results_and_deltas_share_frames_and_are_not_coalesced() -> None:
    sim = settled()
    for n in range(2):
        sim.fleet.issue_command(NODE_ID, "drain", {"n": n})
    sim.pump()
    assert len(sim.running) == 2
    for cmd_id in sim.running:
        sim.node.complete_command(cmd_id, {"n": cmd_id}, sim.now)
    sim.node.queue_delta("capacity", "node", {"cpu": 1}, sim.now)
    sim.node.flush(sim.now)
    (batch,) = batches(sim.node.data_to_send())
    assert len(batch["results"]) == 2 and len(batch["deltas"]) == 1


def test_resource_count_is_bounded_locally() -> None:
    sim = settled(node_cfg=node_config(max_resources=2))
    sim.node.queue_delta("instance", "a", {}, sim.now)
    sim.node.queue_delta("instance", "b", {}, sim.now)
    sim.node.queue_delta("instance", "a", {"again": 1}, sim.now)  # an update is no new resource
    with pytest.raises(TooManyResources):
        sim.node.queue_delta("instance", "c", {}, sim.now)
    sim.node.queue_removal("instance", "a", sim.now)
    sim.node.queue_delta("instance", "c", {}, sim.now)


@pytest.mark.parametrize(
    ("kind", "name", "body", "error"),
    [
        ("", "x", {}, DeltaUsageError),
        ("function", "x" * 2000, {}, DeltaUsageError),
        ("function", "x", {3: "int key"}, DeltaUsageError),
        ("function", "x", {"blob": b"x" * 200_000}, ResourceTooLarge),
    ],
)
def test_bad_changes_are_refused_without_side_effects(
    kind: str, name: str, body: Any, error: type
) -> None:
    sim = settled()
    revision = sim.node.state.revision
    with pytest.raises(error):
        sim.node.queue_delta(kind, name, body, sim.now)
    assert sim.node.state.revision == revision and not sim.node.state.batch


def test_twenty_thousand_changes_flow_end_to_end() -> None:
    sim = settled()
    for i in range(20_000):
        sim.node.queue_delta("instance", f"i{i % 5000}", {"n": i}, sim.now)
    sim.settle(1)
    sim.assert_converged()
    view = sim.fleet.view(NODE_ID)
    assert view is not None and len(view) == 5000
    assert view.get("instance", "i4999") == (20_000, {"n": 19_999})
