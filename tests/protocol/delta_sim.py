"""In-memory harness for the delta protocol: one node, its scheduler(s), a faulty wire.

No sockets, no clocks: ``Sim.now`` is virtual time, frames travel through two
queues (one per direction) and a fault can be injected on any single frame
(drop, duplicate, swap with the next one, disconnect after it). The sim also
plays the daemon (executes commands, counting each execution) and the
scheduler's durable command log (a failover re-issues every command ever
issued, under a higher epoch, to a fresh FleetState).
"""

from __future__ import annotations

import struct
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

from protocol.delta import (
    CloseConnection,
    CommandCompleted,
    CommandReceived,
    DigestMismatch,
    FleetState,
    NodeConfig,
    NodeSession,
    SchedulerConfig,
    SchedulerSession,
    SnapshotApplied,
)
from protocol.errors import ProtocolError
from protocol.frames import FrameDecoder

_LEN = struct.Struct(">I")

NODE_ID = "node-a"


def split_frames(data: bytes) -> list[bytes]:
    """Cut a byte string holding whole frames into frames (the machines emit whole frames)."""
    frames = []
    pos = 0
    while pos < len(data):
        (length,) = _LEN.unpack_from(data, pos)
        end = pos + _LEN.size + length
        assert end <= len(data), "machines must only emit whole frames"
        frames.append(data[pos:end])
        pos = end
    return frames


def decode_all(data: bytes) -> list[dict[str, Any]]:
    """Every message in a byte string of whole frames."""
    decoder = FrameDecoder()
    decoder.receive_data(data)
    return list(decoder.frames())


def node_config(**overrides: Any) -> NodeConfig:
    base: dict[str, Any] = {
        "node_id": NODE_ID,
        "boot_id": "boot-1",
        "handshake_timeout": 3.0,
        "max_batch_delay": 0.05,
    }
    base.update(overrides)
    return NodeConfig(**base)


def scheduler_config(epoch: int = 1, **overrides: Any) -> SchedulerConfig:
    base: dict[str, Any] = {
        "scheduler_id": f"sched-{epoch}",
        "epoch": epoch,
        "heartbeat_interval": 1.0,
        "lease_ttl": 5.0,
        "handshake_timeout": 3.0,
        "resync_interval": 2.0,
    }
    base.update(overrides)
    return SchedulerConfig(**base)


@dataclass
class Sim:
    node_cfg: NodeConfig = field(default_factory=node_config)
    sched_cfg: SchedulerConfig = field(default_factory=scheduler_config)
    fresh_objects: bool = True  # new machine objects on every reconnect
    reconnect_delay: float = 0.2
    blackhole_to_node: bool = False  # lose every scheduler→node frame

    def __post_init__(self) -> None:
        self.now = 0.0
        self.node = NodeSession(self.node_cfg)
        self.fleet = FleetState(self.sched_cfg)
        self.fleets = [self.fleet]
        self.session: SchedulerSession | None = None
        self.connected = False
        self.reconnect_at: float | None = None
        self.to_sched: deque[bytes] = deque()
        self.to_node: deque[bytes] = deque()
        self.frame_no = 0  # frames delivered or lost so far (fault addressing)
        self.fault_at: dict[int, str] = {}
        self.fault_queue: deque[str] = deque()
        self.faults_applied: list[tuple[str, str]] = []  # (fault, message type)
        self.held: dict[bool, bytes] = {}  # per direction (True: to scheduler), for "swap"
        self.log: list[str] = []  # (tag, frame type) of every frame handled, for debugging
        # bookkeeping of the "daemon" and of the scheduler's command log
        self.issued: dict[str, tuple[str, Any]] = {}  # cmd_id -> (kind, body), in order
        self.executed: Counter[str] = Counter()
        self.running: deque[str] = deque()
        self.bodies: dict[str, tuple[str, Any]] = {}
        self.answered: dict[str, str] = {}  # cmd_id -> status, as seen by the current fleet
        self.errors: list[ProtocolError] = []
        self.closes: list[str] = []
        self.snapshots = 0
        self.mismatches = 0
        self.connects = 0
        self.node_events: list[Any] = []
        self.sched_events: list[Any] = []

    # --- connection ------------------------------------------------------------------

    def connect(self, fleet: FleetState | None = None) -> None:
        if self.connected:
            self.disconnect("reconnect")
        if self.fresh_objects:
            self.node = NodeSession(self.node.config, state=self.node.state)
        self.session = SchedulerSession(fleet or self.fleet, self.now)
        self.node.connect(self.now)
        self.connects += 1
        self.connected = True
        self.reconnect_at = None

    def disconnect(self, why: str) -> None:
        if not self.connected:
            return
        self.log.append(f"disconnect: {why}")
        self.connected = False
        self.node.connection_lost(self.now)
        assert self.session is not None
        self.session.connection_lost(self.now)
        self.session = None
        self.to_sched.clear()
        self.to_node.clear()
        self.held.clear()
        self.reconnect_at = self.now + self.reconnect_delay

    # --- the wire -------------------------------------------------------------------------

    def _collect(self) -> None:
        if self.connected:
            assert self.session is not None
            self.to_sched.extend(split_frames(self.node.data_to_send()))
            out = self.session.data_to_send()
            if not self.blackhole_to_node:
                self.to_node.extend(split_frames(out))
        else:
            self.node.data_to_send()  # nothing to carry it

    def _receive(self, to_scheduler: bool, frame: bytes) -> None:
        if not self.connected:
            return
        if to_scheduler:
            assert self.session is not None
            self.session.receive_data(frame, self.now)
            self._drain_scheduler()
        else:
            self.node.receive_data(frame, self.now)
            self._drain_node()

    def _deliver(self, to_scheduler: bool) -> None:
        queue = self.to_sched if to_scheduler else self.to_node
        frame = queue.popleft()
        fault = self.fault_at.pop(self.frame_no, None)
        if fault is None and self.fault_queue:
            fault = self.fault_queue.popleft()
        self.frame_no += 1
        if fault is not None:
            self.faults_applied.append((fault, decode_all(frame)[0].get("t", "?")))
        if fault == "drop":
            return
        if fault == "swap":
            # Reorder: this frame overtakes nothing now; it arrives right after
            # the next frame in the same direction (or never, if none comes).
            self.held[to_scheduler] = frame
            return
        self._receive(to_scheduler, frame)
        held = self.held.pop(to_scheduler, None)
        if held is not None:
            self._receive(to_scheduler, held)
        if fault == "dup":
            self._receive(to_scheduler, frame)
        if fault == "disconnect":
            self.disconnect("injected")

    def pump(self, limit: int = 100_000) -> None:
        """Carry frames both ways until nothing is in flight."""
        for _ in range(limit):
            self._collect()
            if not (self.to_sched or self.to_node):
                return
            if self.to_sched:
                self._deliver(True)
            if self.to_node:
                self._deliver(False)
        raise AssertionError("the wire never went quiet")

    # --- events -----------------------------------------------------------------------------

    def _drain_node(self) -> None:
        while True:
            try:
                event = self.node.next_event()
            except ProtocolError as exc:
                self.errors.append(exc)
                self.disconnect(f"node: {exc!r}")
                return
            if event is None:
                return
            self.node_events.append(event)
            if isinstance(event, CommandReceived):
                self.executed[event.cmd_id] += 1
                self.running.append(event.cmd_id)
                self.bodies[event.cmd_id] = (event.kind, event.body)
            elif isinstance(event, CloseConnection):
                self.closes.append(f"node: {event.code}")
                self.disconnect(f"node close: {event.reason}")

    def _drain_scheduler(self) -> None:
        while self.session is not None:
            try:
                event = self.session.next_event()
            except ProtocolError as exc:
                self.errors.append(exc)
                self.disconnect(f"scheduler: {exc!r}")
                return
            if event is None:
                return
            self.sched_events.append(event)
            if isinstance(event, CommandCompleted):
                if self.session.fleet is self.fleet:
                    self.answered[event.cmd_id] = event.status
            elif isinstance(event, SnapshotApplied):
                self.snapshots += 1
            elif isinstance(event, DigestMismatch):
                self.mismatches += 1
            elif isinstance(event, CloseConnection):
                self.closes.append(f"scheduler: {event.code}")
                self.disconnect(f"scheduler close: {event.reason}")

    # --- actors ------------------------------------------------------------------------------

    def issue(self, kind: str, body: Any) -> str:
        cmd_id = self.fleet.issue_command(NODE_ID, kind, body)
        self.issued[cmd_id] = (kind, body)
        self.pump()
        return cmd_id

    def complete_all(self) -> None:
        """The daemon finishes every running command, applying its effect."""
        while self.running:
            cmd_id = self.running.popleft()
            kind, body = self.bodies[cmd_id]
            if kind == "deploy_function":
                self.node.queue_delta("function", body["name"], {"image": body["image"]}, self.now)
            elif kind == "remove_function":
                self.node.queue_removal("function", body["name"], self.now)
            self.node.complete_command(cmd_id, {"done": kind}, self.now)
        self.pump()

    def change(self, kind: str, name: str, body: Any | None) -> None:
        if body is None:
            self.node.queue_removal(kind, name, self.now)
        else:
            self.node.queue_delta(kind, name, body, self.now)
        self.pump()

    def failover(self) -> None:
        """A new leader with a higher epoch and an empty memory takes over.

        Its durable command log lost every result, so it re-issues every command
        ever issued, with the original ids.
        """
        cfg = self.fleet.config
        new = FleetState(scheduler_config(cfg.epoch + 1))
        self.fleets.append(new)
        self.fleet = new
        self.answered = {}
        for cmd_id, (kind, body) in self.issued.items():
            new.issue_command(NODE_ID, kind, body, cmd_id=cmd_id)
        self.disconnect("failover")

    def advance(self, dt: float) -> None:
        self.now += dt
        if not self.connected and self.reconnect_at is not None and self.now >= self.reconnect_at:
            self.connect()
        self.node.tick(self.now)
        self._drain_node()
        if self.session is not None:
            self.session.tick(self.now)
            self._drain_scheduler()
        self.fleet.expire(self.now)
        self.pump()

    def settle(self, seconds: float = 40.0, step: float = 0.05) -> None:
        """A clean period: no faults, the daemon answers every command."""
        self.fault_at.clear()
        self.fault_queue.clear()
        if not self.connected and self.reconnect_at is None:
            self.reconnect_at = self.now
        for _ in range(round(seconds / step)):
            self.complete_all()
            self.advance(step)
        self.node.flush(self.now)
        self.pump()

    # --- checks ---------------------------------------------------------------------------------

    def scheduler_view(self) -> dict[tuple[str, str], tuple[int, Any]]:
        view = self.fleet.view(NODE_ID)
        return {} if view is None else view.as_dict()

    def assert_converged(self) -> None:
        assert self.connected and self.node.established, self.log[-5:]
        assert not self.node.state.batch, "node still holds unsent changes"
        assert self.node.resources() == self.scheduler_view()
        view = self.fleet.view(NODE_ID)
        assert view is not None and view.digest() == view.recompute_digest()
        # every command ever issued executed exactly once, and answered to the leader
        assert dict(self.executed) == dict.fromkeys(self.issued, 1)
        assert self.fleet.pending_commands(NODE_ID) == []
        assert set(self.answered) == set(self.issued)
        # everything that went wrong was typed
        assert all(isinstance(e, ProtocolError) for e in self.errors)
