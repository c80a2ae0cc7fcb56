"""Scheduler side of the delta-event protocol: one :class:`SchedulerSession` per connection.

The session is deliberately small (a frame decoder, an outbox, a few numbers)
so one scheduler process can hold thousands; everything durable about a node
lives in its :class:`~protocol.delta.fleet.NodeRecord` inside the shared
:class:`~protocol.delta.fleet.FleetState`.

How an IO layer drives it::

    fleet = FleetState(SchedulerConfig(scheduler_id="s1", epoch=7))
    # per accepted connection:
    session = SchedulerSession(fleet, now)
    session.receive_data(chunk, now)            # on bytes
    while (ev := session.next_event()) is not None: ...   # raises ProtocolError
    send(session.data_to_send())                # after every call, incl. fleet.issue_command
    session.tick(now)                           # at session.next_deadline()
    session.connection_lost(now)                # on EOF/error/CloseConnection/ProtocolError
    # one fleet-wide timer:
    for node_id in fleet.expire(now): ...       # node liveness lease ran out
"""

from __future__ import annotations

from typing import Any

from protocol.delta.decode import check_delta, check_result
from protocol.delta.encode import encode_resync, encode_welcome
from protocol.delta.errors import (
    DeltaUsageError,
    InvalidMessage,
    LimitExceeded,
    SequenceGap,
    SnapshotMismatch,
    StaleEpoch,
    UnexpectedMessage,
    UnsupportedFeature,
    UnsupportedVersion,
)
from protocol.delta.events import (
    Change,
    CommandCompleted,
    DeltasApplied,
    DigestMismatch,
    NodeConnected,
    SchedulerEvent,
    SnapshotApplied,
)
from protocol.delta.fleet import FleetState, NodeRecord
from protocol.delta.messages import (
    CMD_RESET,
    CMD_RESUME,
    FEATURE_DIGEST,
    MODE_RESUME,
    MODE_SNAPSHOT,
    PROTO_VERSION,
    Batch,
    Bye,
    Heartbeat,
    Hello,
    Message,
    Snap,
    Welcome,
)
from protocol.delta.resources import ResourceStore
from protocol.delta.session import Phase, SessionBase, check_ack


class SchedulerSession(SessionBase[SchedulerEvent]):
    """One node connection as seen by the scheduler (see the module docstring)."""

    __slots__ = ("_created", "_dead_after", "_digest_on", "_record", "fleet")

    def __init__(self, fleet: FleetState, now: float) -> None:
        super().__init__(Phase.AWAIT_HELLO, now)
        self._open_link(fleet.config.max_frame, now)
        self.fleet = fleet
        self._record: NodeRecord | None = None
        self._created = now
        self._digest_on = False
        cfg = fleet.config
        self._dead_after = cfg.silent_heartbeats * cfg.heartbeat_interval

    @property
    def node_id(self) -> str | None:
        return None if self._record is None else self._record.node_id

    # --- IO-facing API (receive_data, data_to_send, next_event: SessionBase) ----------

    def tick(self, now: float) -> None:
        """Handshake timeout, node silence, heartbeats."""
        self._now = now
        cfg = self.fleet.config
        if self._phase == Phase.AWAIT_HELLO and now >= self._created + cfg.handshake_timeout:
            self._close("no hello within handshake_timeout", "handshake_timeout")
        elif self._phase == Phase.ESTABLISHED:
            if now >= self._last_recv + self._dead_after:
                self._close("node silent for too long", "link_timeout")
            elif now >= self._last_sent + cfg.heartbeat_interval:
                self._send_heartbeat()

    def next_deadline(self) -> float | None:
        cfg = self.fleet.config
        if self._phase == Phase.AWAIT_HELLO:
            return self._created + cfg.handshake_timeout
        if self._phase == Phase.ESTABLISHED:
            return min(self._last_recv + self._dead_after, self._last_sent + cfg.heartbeat_interval)
        return None

    def connection_lost(self, now: float) -> None:
        self._now = now
        self._shut()

    # --- used by FleetState -------------------------------------------------------------

    def send_sequenced(self, frame: bytes) -> None:
        assert self._record is not None
        self._out += frame
        self._sent(self._record.n2s_applied)

    def supersede(self, reason: str) -> None:
        """Another connection of the same node took over; this one must close."""
        if self._phase != Phase.CLOSED:
            self._record = None  # never touch the record again
            self._close(reason, "superseded")

    # --- receiving ------------------------------------------------------------------------

    def _handle(self, m: Message) -> None:
        if self._phase == Phase.AWAIT_HELLO:
            if isinstance(m, Hello):
                self._on_hello(m)
            elif isinstance(m, Bye):
                self._close(f"node closed: {m.message}", m.code)
            else:
                raise UnexpectedMessage(f"{type(m).__name__} before hello")
            return
        record = self._record
        assert record is not None
        if isinstance(m, Batch):
            self._on_batch(record, m)
        elif isinstance(m, Snap):
            self._on_snap(record, m)
        elif isinstance(m, Heartbeat):
            check_ack(record.cmd_replay, m.ack, "node")
            if m.seq > record.n2s_applied:
                raise SequenceGap(f"node sent up to {m.seq}; applied {record.n2s_applied}")
            if m.seq == record.n2s_applied and m.state is not None:
                self._check_digest(record, m.state, m.seq)
        elif isinstance(m, Bye):
            self._close(f"node closed: {m.message}", m.code)
            return
        else:
            raise UnexpectedMessage(f"{type(m).__name__} from a node")
        self._last_recv = record.last_seen = self._now
        record.alive = True

    def _on_hello(self, h: Hello) -> None:
        fleet = self.fleet
        cfg = fleet.config
        if h.proto != PROTO_VERSION:
            raise UnsupportedVersion(f"node speaks version {h.proto}, we {PROTO_VERSION}")
        if h.requires & ~cfg.features:
            raise UnsupportedFeature(f"node requires feature bits {h.requires:#x}")
        if h.epoch > cfg.epoch:
            raise StaleEpoch(f"node has seen epoch {h.epoch}; we are {cfg.epoch}: step down")
        try:
            record = fleet.record(h.node_id)
        except DeltaUsageError as exc:
            raise LimitExceeded(str(exc)) from None
        if record.session is not None and record.session is not self:
            record.session.supersede("a newer connection of this node took over")
        if record.boot_id != h.boot_id:
            # A new boot is a new, empty stream in both directions.
            if record.boot_id is not None:
                record.cmd_stream = fleet.new_cmd_stream()
                record.cmd_replay.clear()
            record.boot_id = h.boot_id
            record.awaiting_snapshot = True
        record.session = self
        self._record = record
        record.window = h.max_inflight
        record.peer_max_frame = h.max_frame
        record.staging = None  # a snapshot never continues across connections
        self._digest_on = bool(cfg.features & h.features & FEATURE_DIGEST)

        # Node → scheduler stream: resume if we applied a prefix the node still holds.
        resume_from = record.n2s_applied + 1
        resume = (
            not record.awaiting_snapshot
            and not record.resync_pending
            and h.oldest_seq <= resume_from <= h.next_seq
        )
        if resume and resume_from == h.next_seq and self._digest_on and h.state is not None:
            resume = h.state == record.view.state()  # nothing to replay: states must agree
        if not resume:
            resume_from = h.next_seq
            record.n2s_applied = h.next_seq - 1
            record.awaiting_snapshot = True

        # Scheduler → node stream: resume if the node follows this stream and we hold the rest.
        replay = record.cmd_replay
        cmd_resume = h.cmd_stream == record.cmd_stream and replay.can_resume_from(h.cmd_acked + 1)
        cmd_from = h.cmd_acked + 1 if cmd_resume else replay.next_seq
        welcome = Welcome(
            proto=PROTO_VERSION,
            scheduler_id=cfg.scheduler_id,
            epoch=cfg.epoch,
            features=cfg.features,
            requires=cfg.requires,
            heartbeat_interval=cfg.heartbeat_interval,
            lease_ttl=cfg.lease_ttl,
            mode=MODE_RESUME if resume else MODE_SNAPSHOT,
            resume_from=resume_from,
            cmd_stream=record.cmd_stream,
            cmd_mode=CMD_RESUME if cmd_resume else CMD_RESET,
            cmd_from=cmd_from,
            max_frame=cfg.max_frame,
        )
        self._out += encode_welcome(welcome, h.max_frame)
        self._phase = Phase.ESTABLISHED
        self._last_recv = record.last_seen = self._now
        record.alive = True
        self._events.append(NodeConnected(h.node_id, h.boot_id, welcome.mode, welcome.cmd_mode))
        if cmd_resume:
            replay.ack(h.cmd_acked)
            for frame in replay.frames_from(cmd_from):
                self.send_sequenced(frame)
            fleet.pump(record)
        else:
            replay.clear()  # old frames must never reach the node again
            fleet.redeliver(record)
        self._ack_sent = record.n2s_applied

    def _sequence(self, record: NodeRecord, seq: int, ack: int) -> bool:
        """Common seq/ack handling; False for a duplicate (to be ignored)."""
        if seq <= record.n2s_applied:
            return False
        if seq != record.n2s_applied + 1:
            raise SequenceGap(f"node frame seq {seq}, expected {record.n2s_applied + 1}")
        check_ack(record.cmd_replay, ack, "node")
        return True

    def _on_batch(self, record: NodeRecord, b: Batch) -> None:
        if not self._sequence(record, b.seq, b.ack):
            return
        if record.awaiting_snapshot or record.staging is not None:
            raise UnexpectedMessage("batch frame where a snapshot part was due")
        # Items before an invalid one may already be applied: harmless, since the
        # frame is not acknowledged and re-applying is idempotent.
        view = record.view
        changes: list[Change] = []
        for item in b.deltas:
            kind, name, version, body, upsert = check_delta(item)
            if upsert:
                if view.upsert(kind, name, version, body):
                    changes.append(Change(kind, name, version, body, False))
            elif view.remove(kind, name, version):
                changes.append(Change(kind, name, version, None, True))
        completed = self._take_results(record, b.results)
        record.n2s_applied = b.seq
        if changes:
            self._events.append(DeltasApplied(record.node_id, b.seq, changes))
        self._events.extend(completed)
        if completed:
            self.fleet.pump(record)
        if b.state is not None:
            self._check_digest(record, b.state, b.seq)
        self._maybe_ack(record)

    def _take_results(self, record: NodeRecord, results: list[Any]) -> list[CommandCompleted]:
        completed = []
        for item in results:
            cmd_id, status, payload = check_result(item)
            if self.fleet.complete(record, cmd_id):
                completed.append(CommandCompleted(record.node_id, cmd_id, status, payload))
        return completed

    def _on_snap(self, record: NodeRecord, s: Snap) -> None:
        if not self._sequence(record, s.seq, s.ack):
            return
        if s.part == 0:
            record.staging = ResourceStore(self.fleet.config.max_resources)
        elif record.staging is None or s.part != record.staging_part + 1:
            raise UnexpectedMessage(f"snapshot part {s.part} out of order")
        record.staging_part = s.part
        staging = record.staging
        for item in s.items:
            kind, name, version, body, upsert = check_delta(item)
            if not upsert:
                raise InvalidMessage("snapshot items must be upserts")
            staging.upsert(kind, name, version, body)
        record.n2s_applied = s.seq
        if s.last:
            record.staging = None
            if s.count != len(staging) or (
                self._digest_on and s.state is not None and s.state != staging.state()
            ):
                record.awaiting_snapshot = True  # the next connection starts over
                raise SnapshotMismatch(f"snapshot of {len(staging)} items does not match its end")
            record.view = staging  # atomic swap: the view is never half a snapshot
            record.awaiting_snapshot = False
            record.resync_pending = False
            self._events.append(SnapshotApplied(record.node_id, len(staging), s.rev))
            # Results in the part of the stream the snapshot replaced may be lost.
            self.fleet.redeliver(record)
        self._maybe_ack(record)

    def _check_digest(self, record: NodeRecord, state: tuple[bytes, int], seq: int) -> None:
        if not self._digest_on or record.awaiting_snapshot or record.staging is not None:
            return
        if state == record.view.state():
            return
        if self._now < record.resync_sent_at + self.fleet.config.resync_interval:
            return  # asked recently; a snapshot is probably on its way
        record.resync_pending = True
        record.resync_sent_at = self._now
        self._out += encode_resync(f"digest mismatch at seq {seq}")
        self._events.append(DigestMismatch(record.node_id, seq))

    # --- sending ----------------------------------------------------------------------------

    def _maybe_ack(self, record: NodeRecord) -> None:
        if record.n2s_applied - self._ack_sent >= self.fleet.config.ack_every:
            self._send_heartbeat()

    def _send_heartbeat(self) -> None:
        record = self._record
        assert record is not None
        self._queue_heartbeat(record.cmd_replay.last_seq, record.n2s_applied, None)

    def _shut(self) -> None:
        super()._shut()
        record = self._record
        if record is not None and record.session is self:
            record.session = None
