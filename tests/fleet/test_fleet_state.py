"""The node's state model: scheduler changes become deltas, batched and coalesced.

The model feeds a real NodeSession; a real SchedulerSession on the other end
of an in-memory wire shows what the central scheduler ends up seeing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio
from support import eventually, running_stack, write_package

from huselet.fleet.state import NodeStateModel
from protocol.delta import (
    FleetState,
    NodeConfig,
    NodeSession,
    SchedulerConfig,
    SchedulerSession,
)
from protocol.frames import FrameDecoder


class Wire:
    """A node session, a scheduler session and the bytes between them (no sockets)."""

    def __init__(self) -> None:
        self.now = 0.0
        self.node = NodeSession(NodeConfig(node_id="n1", boot_id="b1"))
        self.fleet = FleetState(SchedulerConfig(scheduler_id="s", epoch=1))
        self.sched: SchedulerSession | None = None
        self.wakes = 0
        self.model = NodeStateModel(
            self.node, memory_mb=1000, labels={"zone": "a"}, clock=lambda: self.now, wake=self._wake
        )
        self.frames: list[dict[str, Any]] = []  # node -> scheduler, decoded

    def _wake(self) -> None:
        self.wakes += 1

    def connect(self) -> None:
        self.sched = SchedulerSession(self.fleet, self.now)
        self.model.sync(self.now)  # as the link does before every connect
        self.node.connect(self.now)
        self.pump()

    def pump(self) -> None:
        assert self.sched is not None
        for _ in range(100):
            up = self.node.data_to_send()
            if up:
                decoder = FrameDecoder(max_frame=1 << 24)
                decoder.receive_data(up)
                self.frames.extend(decoder.frames())
                self.sched.receive_data(up, self.now)
                while self.sched.next_event() is not None:
                    pass
            down = self.sched.data_to_send()
            if down:
                self.node.receive_data(down, self.now)
                while self.node.next_event() is not None:
                    pass
            if not up and not down:
                return

    def advance(self, dt: float) -> None:
        self.now += dt
        self.model.sync(self.now)
        self.node.tick(self.now)
        self.pump()

    def view(self) -> dict[tuple[str, str], tuple[int, Any]]:
        view = self.fleet.view("n1")
        assert view is not None
        return view.as_dict()

    def batches(self) -> list[dict[str, Any]]:
        return [f for f in self.frames if f["t"] == "batch"]


def instance(fn: str, state: str) -> dict[str, str]:
    return {"function": fn, "state": state}


def test_changes_become_resources_and_capacity_is_derived() -> None:
    w = Wire()
    w.model.on_change("function", "echo", {"memory_mb": 128, "version": 1, "source": "scheduler"})
    w.model.on_change("instance", "echo-1", instance("echo", "starting"))
    w.model.on_change("instance", "echo-2", instance("echo", "starting"))
    w.model.on_change("instance", "echo-1", instance("echo", "idle"))
    w.model.sync(w.now)
    res = w.node.resources()
    assert res[("instance", "echo-1")][1] == instance("echo", "idle")
    assert res[("capacity", "node")][1] == {
        "memory_mb": 1000,
        "memory_used_mb": 256,
        "functions": 1,
        "instances": 2,
        "by_state": {"idle": 1, "starting": 1},
    }
    w.model.on_change("instance", "echo-2", None)
    w.model.on_change("function", "echo", None)
    w.model.sync(w.now)
    res = w.node.resources()
    assert ("instance", "echo-2") not in res and ("function", "echo") not in res
    assert res[("capacity", "node")][1]["memory_used_mb"] == 128
    assert res[("node", "self")][1]["labels"] == {"zone": "a"}


def test_placements_are_reported_on_the_node_resource() -> None:
    w = Wire()
    assert w.node.resources()[("node", "self")][1]["placements"] == "lease_expired"
    w.model.set_placements("open")
    assert w.node.resources()[("node", "self")][1]["placements"] == "open"


def test_what_changed_while_disconnected_arrives_in_the_first_snapshot() -> None:
    w = Wire()
    for i in range(50):
        w.model.on_change("instance", f"i{i}", instance("f", "idle"))
    w.connect()
    view = w.view()
    assert sum(1 for kind, _ in view if kind == "instance") == 50
    assert view[("capacity", "node")][1]["instances"] == 50
    assert [f["t"] for f in w.frames] == ["hello", "snap"]


def test_a_burst_of_instance_changes_is_few_frames_and_converges() -> None:
    w = Wire()
    w.connect()
    w.frames.clear()
    w.wakes = 0
    # 500 instances, each through eight transitions: 4,000 changes.
    for state in ("starting", "idle", "busy", "idle") * 2:
        for i in range(500):
            w.model.on_change("instance", f"i{i}", instance("f", state))
    assert w.model.changes == 4000 + 2  # + node/self and capacity at connect
    w.advance(0.06)  # past the batching delay
    # Coalesced per resource: one delta per instance (+ capacity), in one frame.
    (batch,) = w.batches()
    assert len(batch["deltas"]) == 501
    # The writer is woken when a batch starts, not per change.
    assert w.wakes == 1
    view = w.view()
    states = {body["state"] for (kind, _), (_, body) in view.items() if kind == "instance"}
    assert states == {"idle"}
    assert view[("capacity", "node")][1]["by_state"] == {"idle": 500}


def test_distinct_changes_beyond_the_batch_bound_leave_in_full_frames() -> None:
    w = Wire()
    w.connect()
    w.frames.clear()
    w.wakes = 0
    for i in range(3000):
        w.model.on_change("instance", f"i{i}", instance("f", "starting"))
    # Every 1,024 pending changes are framed at once and the writer is woken to send them.
    assert [len(b["deltas"]) for b in w.batches()] == []  # not pumped yet
    w.pump()
    assert [len(b["deltas"]) for b in w.batches()] == [1024, 1024]
    assert w.wakes >= 3
    w.advance(0.06)
    assert sum(len(b["deltas"]) for b in w.batches()) == 3001  # + capacity
    assert len(w.batches()) == 3


def test_a_refused_change_is_counted_and_does_not_raise() -> None:
    w = Wire()
    w.model.on_change("instance", "x" * 5000, instance("f", "idle"))  # name too long
    assert w.model.dropped == 1


@pytest.mark.e2e
async def test_a_real_node_scheduler_reports_functions_and_instances(short_tmp: Path) -> None:
    write_package(short_tmp, "echo", "def handler(event, context):\n    return event\n")
    functions = [{"name": "echo", "package": "pkgs/echo", "handler": "main:handler"}]
    async with running_stack(short_tmp, functions) as stack:
        node = NodeSession(NodeConfig(node_id="n1", boot_id="b1"))
        model = NodeStateModel(node, memory_mb=1000, clock=trio.current_time)
        model.attach(stack.dispatcher)
        assert node.resources()[("function", "echo")][1]["source"] == "config"
        result = await stack.dispatcher.invoke("echo", b'{"a": 1}', "json")
        assert result.body
        (instance_id,) = stack.pool("echo").instances
        # The instance turns idle when it asks for more work, just after the reply.
        await eventually(
            lambda: node.resources()[("instance", instance_id)][1] == instance("echo", "idle")
        )
        model.sync(trio.current_time())
        assert node.resources()[("capacity", "node")][1]["memory_used_mb"] == 256
        await stack.dispatcher.stop_instances()
        assert ("instance", instance_id) not in node.resources()
