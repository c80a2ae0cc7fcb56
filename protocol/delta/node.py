"""Node side of the delta-event protocol: one :class:`NodeSession` per node boot.

The session outlives connections (like a ZooKeeper session): the daemon keeps
reporting state and finishing commands while the link is down, and each new
connection resumes from where the last one stopped. Everything that must
survive a reconnect lives in :class:`NodeState`; a fresh ``NodeSession`` built
on an existing state continues exactly where the old object left off.

How an IO layer drives it (nothing here blocks, reads a clock or does IO)::

    node = NodeSession(NodeConfig(node_id=..., boot_id=...))
    # daemon, at any time:   node.queue_delta(kind, name, body, now)
    #                        node.queue_removal(kind, name, now)
    #                        node.complete_command(cmd_id, result, now)
    node.connect(now)                       # on TCP connect: HELLO is queued
    send(node.data_to_send())               # after *every* call below as well
    node.receive_data(chunk, now)           # on bytes
    while (ev := node.next_event()) is not None: ...   # raises ProtocolError
    node.tick(now)                          # at node.next_deadline()
    node.connection_lost(now)               # on EOF/error, or after CloseConnection
                                            # or a raised ProtocolError

Sequenced frames are created only while established (HELLO states the
stream's exact range), so changes made while disconnected coalesce in the
batcher instead of filling the replay buffer.
"""

from __future__ import annotations

from typing import Any

from protocol.delta.batch import PendingDelta
from protocol.delta.encode import assemble, encode_hello, encode_item
from protocol.delta.errors import (
    ResumeMismatch,
    SequenceGap,
    StaleEpoch,
    UnexpectedMessage,
    UnknownCommand,
    UnsupportedFeature,
    UnsupportedVersion,
)
from protocol.delta.events import (
    CloseConnection,
    CommandReceived,
    CommandRefused,
    Connected,
    LeaseExpired,
    LeaseGranted,
    NodeEvent,
    SnapshotSent,
)
from protocol.delta.messages import (
    CMD_RESET,
    CMD_RESUME,
    COMMAND_KINDS,
    FEATURE_DIGEST,
    FRAME_OVERHEAD,
    MIN_MAX_FRAME,
    MODE_RESUME,
    PROTO_VERSION,
    STATUS_ERROR,
    STATUS_OK,
    STATUS_REFUSED,
    STATUS_UNSUPPORTED,
    Bye,
    Command,
    Heartbeat,
    Hello,
    Message,
    Resync,
    Tag,
    Welcome,
)
from protocol.delta.nodestate import NodeConfig, NodeState
from protocol.delta.resources import ResourceStore
from protocol.delta.session import Phase, SessionBase, check_ack


class NodeSession(SessionBase[NodeEvent]):
    """The node's sans-IO protocol machine (see the module docstring for driving it)."""

    def __init__(self, config: NodeConfig, *, state: NodeState | None = None) -> None:
        if state is not None and state.config != config:
            raise ValueError("state belongs to a different configuration")
        super().__init__(Phase.IDLE, 0.0)
        self.config = config
        self.state = state if state is not None else NodeState(config)
        self._reset_connection()

    def _reset_connection(self) -> None:
        self._open_link(self.config.max_frame, 0.0)
        self._connected_at = 0.0
        self._scheduler_id = ""
        self._heartbeat = self._lease_ttl = self._dead_after = 0.0
        self._peer_max_frame = MIN_MAX_FRAME
        self._budget = MIN_MAX_FRAME - FRAME_OVERHEAD
        self._digest_on = False

    # --- properties -------------------------------------------------------------

    @property
    def phase(self) -> Phase:
        """``idle`` | ``handshake`` | ``established`` | ``closed`` (awaiting connection_lost)."""
        return self._phase

    @property
    def lease_held(self) -> bool:
        return self.state.lease_held

    @property
    def scheduler_id(self) -> str:
        return self._scheduler_id

    # --- connection lifecycle ------------------------------------------------------

    def connect(self, now: float) -> None:
        """A new transport connection is up: queue HELLO."""
        if self._phase != Phase.IDLE:
            self.connection_lost(now)
        self._now = self._connected_at = now
        self._phase = Phase.HANDSHAKE
        st, cfg = self.state, self.config
        hello = Hello(
            proto=PROTO_VERSION,
            node_id=cfg.node_id,
            boot_id=cfg.boot_id,
            features=cfg.features,
            requires=cfg.requires,
            next_seq=st.replay.next_seq,
            oldest_seq=st.replay.first_seq,
            cmd_stream=st.cmd_stream,
            cmd_acked=st.cmd_applied,
            epoch=st.highest_epoch,
            max_inflight=cfg.max_inflight,
            max_frame=cfg.max_frame,
            state=st.store.state() if cfg.features & FEATURE_DIGEST else None,
        )
        self._out += encode_hello(hello, MIN_MAX_FRAME)

    def connection_lost(self, now: float) -> None:
        """The transport is gone; durable state is kept for the next connect."""
        self._now = now
        self._phase = Phase.IDLE
        self._reset_connection()

    def tick(self, now: float) -> None:
        """Run timers: batch flush, heartbeat, handshake/link timeouts, lease expiry."""
        self._now = now
        st, cfg = self.state, self.config
        if self._phase == Phase.HANDSHAKE and now >= self._connected_at + cfg.handshake_timeout:
            self._close("no welcome within handshake_timeout", "handshake_timeout")
        elif self._phase == Phase.ESTABLISHED:
            if now >= self._last_recv + self._dead_after:
                self._close("scheduler silent for too long", "link_timeout")
            else:
                due = st.batch.due_at(cfg.max_batch_delay)
                if due is not None and now >= due:
                    self._flush()
                if now >= self._last_sent + self._heartbeat:
                    self._send_heartbeat()
        if st.lease_held and now >= st.lease_deadline:
            st.lease_held = False
            self._events.append(LeaseExpired(st.lease_deadline))

    def next_deadline(self) -> float | None:
        """When :meth:`tick` must run next (None: nothing timed is pending)."""
        st = self.state
        deadlines = [st.lease_deadline] if st.lease_held else []
        if self._phase == Phase.HANDSHAKE:
            deadlines.append(self._connected_at + self.config.handshake_timeout)
        elif self._phase == Phase.ESTABLISHED:
            deadlines.append(self._last_recv + self._dead_after)
            deadlines.append(self._last_sent + self._heartbeat)
            due = st.batch.due_at(self.config.max_batch_delay)
            if due is not None:
                deadlines.append(due)
        return min(deadlines) if deadlines else None

    # --- daemon API ---------------------------------------------------------------

    def queue_delta(self, kind: str, name: str, body: Any, now: float) -> int:
        """Report that resource ``kind/name`` now has ``body``; returns its new version.

        The body is encoded here, once; later mutation of the object has no
        effect. Refused with :class:`DeltaUsageError` (nothing changed) if the
        key or body is invalid or the node already reports ``max_resources``.
        """
        version = self.state.put_upsert(kind, name, body, now)
        self._maybe_flush(now)
        return version

    def queue_removal(self, kind: str, name: str, now: float) -> int | None:
        """Report that ``kind/name`` is gone; returns the removal's version (None if absent)."""
        version = self.state.put_removal(kind, name, now)
        self._maybe_flush(now)
        return version

    def flush(self, now: float) -> None:
        """Put every pending change on the stream now (if established)."""
        self._now = now
        if self._phase == Phase.ESTABLISHED:
            self._flush()

    def complete_command(self, cmd_id: str, result: Any, now: float, *, ok: bool = True) -> None:
        """The daemon finished a command surfaced by :class:`CommandReceived`.

        Works while disconnected (the result waits for the next connection). A
        result the peer could not take (:class:`ResourceTooLarge`, non-string
        map keys) is refused and the command stays in progress.
        """
        st = self.state
        if not st.results.is_running(cmd_id):
            raise UnknownCommand(f"command {cmd_id!r} is not in progress")
        status = STATUS_OK if ok else STATUS_ERROR
        item = encode_item(st.packer, [cmd_id, status, result], f"result of {cmd_id}")
        st.results.finish(cmd_id, item)
        st.batch.put_result(item, now)
        self._maybe_flush(now)

    def resources(self) -> dict[tuple[str, str], tuple[int, Any]]:
        """Reported state including unsent changes: ``{(kind, name): (version, body)}``."""
        return self.state.resources()

    # --- receiving ------------------------------------------------------------------

    def _handle(self, m: Message) -> None:
        if self._phase == Phase.HANDSHAKE:
            if isinstance(m, Welcome):
                self._on_welcome(m)
            elif isinstance(m, Bye):
                self._on_bye(m)
            else:
                raise UnexpectedMessage(f"{type(m).__name__} before welcome")
            return
        if isinstance(m, Command):
            self._on_command(m)
        elif isinstance(m, Heartbeat):
            check_ack(self.state.replay, m.ack, "scheduler")
            if m.seq > self.state.cmd_applied:
                # Progress mark: the scheduler sent frames we never got (tail loss).
                raise SequenceGap(f"scheduler sent up to {m.seq}; applied {self.state.cmd_applied}")
        elif isinstance(m, Resync):
            self._send_snapshot(f"resync: {m.reason}")
        elif isinstance(m, Bye):
            self._on_bye(m)
            return
        else:
            raise UnexpectedMessage(f"{type(m).__name__} from a scheduler")
        self._renew()

    def _on_welcome(self, w: Welcome) -> None:
        st, cfg = self.state, self.config
        if w.proto != PROTO_VERSION:
            raise UnsupportedVersion(f"scheduler speaks version {w.proto}, we {PROTO_VERSION}")
        if w.requires & ~cfg.features:
            raise UnsupportedFeature(f"scheduler requires feature bits {w.requires:#x}")
        if w.epoch < st.highest_epoch:
            raise StaleEpoch(f"scheduler epoch {w.epoch} is below {st.highest_epoch} (fenced)")
        # Validate both stream decisions before changing anything.
        if w.mode == MODE_RESUME:
            if not st.replay.can_resume_from(w.resume_from):
                held = f"{st.replay.first_seq}..{st.replay.last_seq}"
                raise ResumeMismatch(f"resume from {w.resume_from}; we hold {held}")
        elif w.resume_from != st.replay.next_seq:
            raise ResumeMismatch(f"snapshot at {w.resume_from}; our next is {st.replay.next_seq}")
        if w.cmd_mode == CMD_RESUME and (
            w.cmd_stream != st.cmd_stream or w.cmd_from != st.cmd_applied + 1
        ):
            raise ResumeMismatch(f"command resume at {w.cmd_stream}:{w.cmd_from} is not ours")
        st.highest_epoch = w.epoch
        self._scheduler_id = w.scheduler_id
        self._heartbeat = w.heartbeat_interval
        self._lease_ttl = w.lease_ttl
        self._dead_after = min(cfg.silent_heartbeats * w.heartbeat_interval, w.lease_ttl)
        self._peer_max_frame = w.max_frame
        self._budget = min(cfg.max_batch_bytes, w.max_frame - FRAME_OVERHEAD)
        self._digest_on = bool(cfg.features & w.features & FEATURE_DIGEST)
        if w.cmd_mode == CMD_RESET:
            st.cmd_stream = w.cmd_stream
            st.cmd_applied = w.cmd_from - 1
        self._phase = Phase.ESTABLISHED
        self._last_sent = self._now
        self._events.append(Connected(w.scheduler_id, w.epoch, w.mode, w.cmd_mode))
        self._renew()
        if w.mode == MODE_RESUME:
            st.replay.ack(w.resume_from - 1)
            for frame in st.replay.frames_from(w.resume_from):
                self._out += frame
            self._flush()
        else:
            st.replay.clear()  # superseded by the snapshot; never resumed into
            self._send_snapshot("welcome")

    def _on_command(self, c: Command) -> None:
        st = self.state
        check_ack(st.replay, c.ack, "scheduler")
        if c.seq <= st.cmd_applied:
            return  # duplicate of an applied frame
        if c.seq != st.cmd_applied + 1:
            raise SequenceGap(f"command seq {c.seq}, expected {st.cmd_applied + 1}")
        st.cmd_applied = c.seq
        if c.epoch < st.highest_epoch:
            # Fenced; not stored, so the current leader may still deliver this cmd_id.
            reason = f"epoch {c.epoch} < {st.highest_epoch}"
            item = st.packer.pack([c.cmd_id, STATUS_REFUSED, {"reason": "stale_epoch"}])
            st.batch.put_result(item, self._now)
            self._events.append(CommandRefused(c.cmd_id, STATUS_REFUSED, reason))
        else:
            st.highest_epoch = c.epoch
            known = st.results.lookup(c.cmd_id)
            if isinstance(known, bytes):
                st.batch.put_result(known, self._now)  # re-delivery: answer from the table
            elif known is None and c.kind not in COMMAND_KINDS:
                item = st.packer.pack([c.cmd_id, STATUS_UNSUPPORTED, {"kind": c.kind}])
                st.results.store(c.cmd_id, item)
                st.batch.put_result(item, self._now)
                self._events.append(CommandRefused(c.cmd_id, STATUS_UNSUPPORTED, c.kind))
            elif known is None:
                st.results.start(c.cmd_id)
                self._events.append(CommandReceived(c.cmd_id, c.kind, c.body, c.epoch))
        if st.cmd_applied - self._ack_sent >= self.config.ack_every:
            self._send_heartbeat()

    def _on_bye(self, m: Bye) -> None:
        self._events.append(CloseConnection(f"scheduler closed: {m.message}", m.code, m.leader))
        self._shut()

    def _renew(self) -> None:
        """A valid scheduler frame arrived: the link lives and the lease extends."""
        st = self.state
        self._last_recv = self._now
        st.lease_deadline = self._now + self._lease_ttl
        if not st.lease_held:
            st.lease_held = True
            self._events.append(LeaseGranted(st.highest_epoch, st.lease_deadline))

    # --- sending ----------------------------------------------------------------------

    def _maybe_flush(self, now: float) -> None:
        self._now = now
        batch, cfg = self.state.batch, self.config
        if self._phase == Phase.ESTABLISHED and (
            len(batch) >= cfg.max_batch_items or batch.nbytes >= cfg.max_batch_bytes
        ):
            self._flush()

    def _send_heartbeat(self) -> None:
        st = self.state
        state = st.store.state() if self._digest_on else None
        self._queue_heartbeat(st.replay.last_seq, st.cmd_applied, state)

    def _send_sequenced(self, fields: list[tuple[str, Any]], arrays: list[Any]) -> None:
        st = self.state
        seq = st.replay.next_seq
        head: list[tuple[str, Any]] = [("seq", seq), ("ack", st.cmd_applied), *fields]
        frame = assemble(head, arrays, self._peer_max_frame)
        st.replay.append(seq, frame)
        self._out += frame
        self._sent(st.cmd_applied)

    def _emit_batch(self, deltas: list[bytes], results: list[bytes]) -> None:
        fields: list[tuple[str, Any]] = [("t", Tag.BATCH)]
        if self._digest_on:
            digest, count = self.state.store.state()
            fields += [("digest", digest), ("count", count)]
        arrays = [("deltas", deltas)] if deltas else []
        if results:
            arrays.append(("results", results))
        self._send_sequenced(fields, arrays)

    def _flush(self) -> None:
        """Move pending changes into as few batch frames as the byte budget allows.

        Each frame's digest must describe the state *after* exactly its items,
        so items are applied to the store as they are placed into a frame.
        """
        st = self.state
        if not st.batch:
            return
        deltas, results = st.batch.take()
        budget = self._budget
        frame_deltas: list[bytes] = []
        frame_results: list[bytes] = []
        size = 0
        for item in results:
            if size + len(item) > budget and frame_results:
                self._emit_batch([], frame_results)
                frame_results, size = [], 0
            frame_results.append(item)
            size += len(item)
        store = st.store
        for (kind, name), (version, item, upsert) in deltas.items():
            if size + len(item) > budget and (frame_deltas or frame_results):
                self._emit_batch(frame_deltas, frame_results)
                frame_deltas, frame_results, size = [], [], 0
            if upsert:
                store.upsert(kind, name, version, item)
            else:
                store.remove(kind, name, version)
            frame_deltas.append(item)
            size += len(item)
        if frame_deltas or frame_results:
            self._emit_batch(frame_deltas, frame_results)

    def _send_snapshot(self, reason: str) -> None:
        """Put the full state on the stream; pending results follow in a batch."""
        st = self.state
        deltas, results = st.batch.take()
        _apply(st.store, deltas)
        for item in results:
            st.batch.put_result(item, self._now)
        chunks: list[list[bytes]] = [[]]
        size = 0
        for item in st.store.values():
            if size + len(item) > self._budget and chunks[-1]:
                chunks.append([])
                size = 0
            chunks[-1].append(item)
            size += len(item)
        first = st.replay.next_seq
        last = len(chunks) - 1
        for part, items in enumerate(chunks):
            fields: list[tuple[str, Any]] = [
                ("t", Tag.SNAP),
                ("rev", st.revision),
                ("part", part),
                ("last", part == last),
            ]
            if part == last:
                fields.append(("count", len(st.store)))
                if self._digest_on:
                    fields.append(("digest", st.store.digest()))
            self._send_sequenced(fields, [("items", items)])
        self._events.append(SnapshotSent(reason, len(st.store), first))
        self._flush()


def _apply(store: ResourceStore[bytes], deltas: dict[tuple[str, str], PendingDelta]) -> None:
    for (kind, name), (version, item, upsert) in deltas.items():
        if upsert:
            store.upsert(kind, name, version, item)
        else:
            store.remove(kind, name, version)
