"""Scheduler-side durable state: one :class:`FleetState` per scheduler incarnation.

A scheduler process holds one ``FleetState`` (its id, its fencing ``epoch``,
and a :class:`NodeRecord` per node) and one small
:class:`~protocol.delta.scheduler.SchedulerSession` per open connection. A
record outlives connections: it holds the node's resource view, how far the
node's stream was applied, the command stream to the node (sequence numbers
plus a bounded replay buffer) and the commands still owed a result.

Commands are delivered at least once: a command is re-sent whenever the
scheduler cannot know the node has it (command-stream reset) or may have lost
its result (after a snapshot of the node's state). The node answers duplicates
from its result table, which makes the *effect* exactly-once. At most the
node's announced window of commands is in flight; the rest wait here, bounded
by ``max_pending``.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Any, Protocol

import msgpack

from protocol.delta.encode import encode_control, encode_item
from protocol.delta.errors import CommandBacklogFull, DeltaUsageError
from protocol.delta.messages import (
    DEFAULT_MAX_FRAME,
    MAX_ID_LEN,
    MAX_KIND_LEN,
    MIN_MAX_FRAME,
    SUPPORTED_FEATURES,
    Tag,
)
from protocol.delta.replay import ReplayBuffer
from protocol.delta.resources import ResourceStore


class NodeLink(Protocol):
    """The open connection of a node, as its record sees it (a ``SchedulerSession``).

    A Protocol, so this module does not import the session's (which imports it).
    """

    @property
    def established(self) -> bool: ...

    def send_sequenced(self, frame: bytes) -> None:
        """Queue a sequenced frame (already in the record's replay buffer)."""

    def supersede(self, reason: str) -> None:
        """Another connection of the node took over (or it was forgotten): close."""


@dataclass(frozen=True, slots=True)
class SchedulerConfig:
    scheduler_id: str
    epoch: int  # fencing token: strictly higher for every new leader incarnation
    heartbeat_interval: float = 1.0
    lease_ttl: float = 10.0
    max_frame: int = DEFAULT_MAX_FRAME
    replay_max_frames: int = 256  # per node, scheduler→node
    replay_max_bytes: int = 4 << 20
    max_resources: int = 100_000  # per node view
    max_pending: int = 1024  # unanswered commands per node
    max_nodes: int = 100_000
    handshake_timeout: float = 10.0
    ack_every: int = 16
    silent_heartbeats: float = 3.0
    resync_interval: float = 5.0  # at most one RESYNC request per node per interval
    features: int = SUPPORTED_FEATURES
    requires: int = 0

    def __post_init__(self) -> None:
        if not self.scheduler_id or len(self.scheduler_id) > MAX_ID_LEN:
            raise ValueError("scheduler_id must be 1..128 characters")
        if self.epoch < 1:
            raise ValueError("epoch must be positive")
        if not 0.01 <= self.heartbeat_interval < self.lease_ttl <= 3600:
            raise ValueError("need 0.01 <= heartbeat_interval < lease_ttl <= 3600")
        if self.max_frame < MIN_MAX_FRAME:
            raise ValueError(f"max_frame must be at least {MIN_MAX_FRAME}")
        if min(self.max_pending, self.max_nodes, self.max_resources, self.ack_every) < 1:
            raise ValueError("counts must be positive")


class PendingCommand:
    __slots__ = ("body", "kind", "sent")

    def __init__(self, kind: str, body: Any) -> None:
        self.kind = kind
        self.body = body
        self.sent = False  # on the current command stream, awaiting a result


class NodeRecord:
    """Everything the scheduler keeps about one node across its connections."""

    __slots__ = (
        "alive",
        "awaiting_snapshot",
        "boot_id",
        "cmd_replay",
        "cmd_stream",
        "inflight",
        "last_seen",
        "n2s_applied",
        "node_id",
        "peer_max_frame",
        "pending",
        "queue",
        "resync_pending",
        "resync_sent_at",
        "session",
        "staging",
        "staging_part",
        "view",
        "window",
    )

    def __init__(self, node_id: str, cmd_stream: str, config: SchedulerConfig) -> None:
        self.node_id = node_id
        self.boot_id: str | None = None
        self.view: ResourceStore[Any] = ResourceStore(config.max_resources)
        self.staging: ResourceStore[Any] | None = None  # snapshot being received
        self.staging_part = 0
        self.awaiting_snapshot = True  # no batch is applied before a snapshot of this boot
        self.n2s_applied = 0  # highest contiguous node→scheduler seq applied
        self.resync_pending = False
        self.resync_sent_at = float("-inf")
        self.cmd_stream = cmd_stream
        self.cmd_replay = ReplayBuffer(
            max_frames=config.replay_max_frames, max_bytes=config.replay_max_bytes
        )
        self.pending: OrderedDict[str, PendingCommand] = OrderedDict()
        self.queue: deque[str] = deque()  # pending ids not yet sent (may hold stale ids)
        self.inflight = 0
        self.window = 0  # from the node's HELLO; nothing is sent before one
        self.peer_max_frame = MIN_MAX_FRAME
        self.session: NodeLink | None = None
        self.last_seen = 0.0
        self.alive = False


class FleetState:
    """All nodes known to one scheduler incarnation; shared by all its sessions."""

    def __init__(self, config: SchedulerConfig) -> None:
        self.config = config
        self.records: dict[str, NodeRecord] = {}
        self._stream_ids = itertools.count(1)
        self._cmd_ids = itertools.count(1)
        self._packer = msgpack.Packer(use_bin_type=True, autoreset=True)

    # --- API for the scheduler's logic -----------------------------------------------

    def view(self, node_id: str) -> ResourceStore[Any] | None:
        """The node's reported resources (read-only use), or None if unknown."""
        record = self.records.get(node_id)
        return None if record is None else record.view

    def pending_commands(self, node_id: str) -> list[str]:
        """Ids of commands still owed a result by ``node_id``."""
        record = self.records.get(node_id)
        return [] if record is None else list(record.pending)

    def issue_command(
        self, node_id: str, kind: str, body: Any = None, *, cmd_id: str | None = None
    ) -> str:
        """Queue a command for ``node_id`` (connected or not); returns its ``cmd_id``.

        Re-issuing a ``cmd_id`` that is still pending is a no-op. A new leader
        re-issues the commands of its predecessor *with their original ids*, so
        the node can recognise what it already executed.
        """
        if not kind or len(kind) > MAX_KIND_LEN:
            raise DeltaUsageError(f"command kind must be 1..{MAX_KIND_LEN} characters")
        if cmd_id is None:
            cmd_id = f"{self.config.scheduler_id}:{self.config.epoch}:{next(self._cmd_ids)}"
        elif not cmd_id or len(cmd_id) > MAX_ID_LEN:
            raise DeltaUsageError(f"cmd_id must be 1..{MAX_ID_LEN} characters")
        body = {} if body is None else body
        encode_item(self._packer, body, f"command {cmd_id}")  # refuse what the node would
        record = self.record(node_id)
        if cmd_id in record.pending:
            return cmd_id
        if len(record.pending) >= self.config.max_pending:
            raise CommandBacklogFull(f"{len(record.pending)} commands pending for {node_id}")
        record.pending[cmd_id] = PendingCommand(kind, body)
        record.queue.append(cmd_id)
        self.pump(record)
        return cmd_id

    def expire(self, now: float) -> list[str]:
        """Nodes whose lease ran out since the last call (no valid frame for lease_ttl)."""
        ttl = self.config.lease_ttl
        expired = []
        for record in self.records.values():
            if record.alive and now >= record.last_seen + ttl:
                record.alive = False
                expired.append(record.node_id)
        return expired

    def forget(self, node_id: str) -> None:
        """Drop a node (decommissioned); its open connection, if any, is told to close."""
        record = self.records.pop(node_id, None)
        if record is not None and record.session is not None:
            record.session.supersede("node forgotten by the scheduler")

    # --- used by sessions ---------------------------------------------------------------

    def new_cmd_stream(self) -> str:
        cfg = self.config
        return f"{cfg.scheduler_id}/{cfg.epoch}/{next(self._stream_ids)}"

    def record(self, node_id: str) -> NodeRecord:
        """The node's record, created on first sight; refused past ``max_nodes``."""
        record = self.records.get(node_id)
        if record is not None:
            return record
        if len(self.records) >= self.config.max_nodes:
            raise DeltaUsageError(f"fleet already tracks {self.config.max_nodes} nodes")
        record = self.records[node_id] = NodeRecord(node_id, self.new_cmd_stream(), self.config)
        return record

    def pump(self, record: NodeRecord) -> None:
        """Send queued commands while the node's window has room."""
        session = record.session
        if session is None or not session.established:
            return
        pending, queue, replay = record.pending, record.queue, record.cmd_replay
        while record.inflight < record.window and queue:
            cmd_id = queue.popleft()
            command = pending.get(cmd_id)
            if command is None or command.sent:
                continue  # answered or re-queued meanwhile
            seq = replay.next_seq
            frame = encode_control(
                {
                    "t": Tag.CMD,
                    "seq": seq,
                    "ack": record.n2s_applied,
                    "epoch": self.config.epoch,
                    "cmd_id": cmd_id,
                    "kind": command.kind,
                    "body": command.body,
                },
                record.peer_max_frame,
            )
            replay.append(seq, frame)
            command.sent = True
            record.inflight += 1
            session.send_sequenced(frame)

    def redeliver(self, record: NodeRecord) -> None:
        """Re-send every pending command (the node dedups by ``cmd_id``)."""
        for command in record.pending.values():
            command.sent = False
        record.queue = deque(record.pending)
        record.inflight = 0
        self.pump(record)

    def complete(self, record: NodeRecord, cmd_id: str) -> bool:
        """A result arrived; False if it was a duplicate."""
        command = record.pending.pop(cmd_id, None)
        if command is None:
            return False
        if command.sent:
            record.inflight -= 1
        return True
