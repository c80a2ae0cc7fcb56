"""CentralScheduler: one process of the reference central scheduler (standby, then leader).

Life of a process: serve the admin endpoint (as standby) → wait for the leader
lock → bump the epoch → load the journal (desired functions, commands without
a result) → re-issue those commands with their original ids → listen for
nodes. From then on, per node connection a :class:`SchedulerSession` is
driven by a reader task and a writer loop (timers at ``next_deadline()``);
one :class:`FleetState` holds every node's record and view; a timer expires
silent nodes and reconciles desired against reported state
(:mod:`huselet.central.placement`).

Every command is journaled before its frame can leave (the writer only runs
after the synchronous ``_issue`` returned), and every result is journaled
when it arrives, so a standby that takes over knows exactly which commands
still need an answer.
"""

from __future__ import annotations

import itertools
import math
from collections import Counter, OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from huselet.central.journal import Journal
from huselet.central.leader import LeaderLock
from huselet.central.placement import Reported, reconcile
from huselet.log import get_logger
from protocol.delta import (
    CloseConnection,
    CommandBacklogFull,
    CommandCompleted,
    DeltasApplied,
    DeltaUsageError,
    DigestMismatch,
    FleetState,
    NodeConnected,
    SchedulerConfig,
    SchedulerEvent,
    SchedulerSession,
    SnapshotApplied,
)
from protocol.errors import ProtocolError

log = get_logger("central")

RECEIVE_CHUNK = 256 * 1024
SEND_TIMEOUT_S = 5.0
RESULTS_KEPT = 4096


class NotLeader(Exception):
    """A mutation was asked of a standby."""


@dataclass(frozen=True)
class CentralSettings:
    scheduler_id: str
    listen_host: str
    listen_port: int
    state_dir: Path
    heartbeat_s: float = 1.0
    lease_s: float = 10.0
    standby_poll_s: float = 0.2
    reconcile_s: float = 1.0
    fsync: bool = True
    max_connections: int = 10_000


class _Conn:
    """One node connection: its stream, its session and the writer's wake-up."""

    __slots__ = ("closing", "node_id", "session", "stream", "wake_event")

    def __init__(self, stream: trio.SocketStream, session: SchedulerSession) -> None:
        self.stream = stream
        self.session = session
        self.wake_event = trio.Event()
        self.closing = False
        self.node_id: str | None = None

    def wake(self) -> None:
        self.wake_event.set()


class CentralScheduler:
    def __init__(self, settings: CentralSettings) -> None:
        self.settings = settings
        self.lock = LeaderLock(settings.state_dir)
        self.journal = Journal(settings.state_dir / "journal.jsonl", fsync=settings.fsync)
        self.role = "standby"
        self.epoch = 0
        self.fleet: FleetState | None = None
        self.leading = trio.Event()
        self.listen_port: int | None = None
        self.conns: set[_Conn] = set()
        self.by_node: dict[str, _Conn] = {}
        self.reported: dict[str, dict[str, Reported]] = {}  # node -> function -> as reported
        self.outstanding: dict[str, dict[str, str]] = {}  # node -> function -> cmd_id
        self.failed: dict[str, dict[str, tuple[int, float]]] = {}  # node -> fn -> (version, when)
        self.results: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self.counters: Counter[str] = Counter()
        self._dirty: set[str] = set()
        self._reconcile_now = trio.Event()
        self._changed = trio.Event()
        self._cmd_seq = itertools.count(1)

    # --- lifecycle ---------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Standby until the lock is ours, then lead until cancelled."""
        try:
            task_status.started()
            log.info("central standby", scheduler=self.settings.scheduler_id)
            await self.lock.acquire(self.settings.standby_poll_s)
            async with trio.open_nursery() as nursery:
                listeners = await trio.open_tcp_listeners(
                    self.settings.listen_port, host=self.settings.listen_host
                )
                self._become_leader()
                self.listen_port = listeners[0].socket.getsockname()[1]
                self.lock.announce(
                    {
                        "scheduler_id": self.settings.scheduler_id,
                        "epoch": self.epoch,
                        "listen": f"{self.settings.listen_host}:{self.listen_port}",
                    }
                )
                log.info(
                    "central leader",
                    scheduler=self.settings.scheduler_id,
                    epoch=self.epoch,
                    listen=f"{self.settings.listen_host}:{self.listen_port}",
                    functions=len(self.journal.state.functions),
                    reissued=len(self.journal.state.pending),
                )
                self.leading.set()
                nursery.start_soon(self._timers)
                await trio.serve_listeners(self._handle, listeners)
        finally:
            self.journal.close()
            self.lock.release()

    def _become_leader(self) -> None:
        self.epoch = self.lock.next_epoch()
        s = self.settings
        self.fleet = FleetState(
            SchedulerConfig(
                scheduler_id=s.scheduler_id,
                epoch=self.epoch,
                heartbeat_interval=s.heartbeat_s,
                lease_ttl=s.lease_s,
            )
        )
        state = self.journal.load()
        self.journal.open()
        for cmd in list(state.pending.values()):
            # The predecessor's commands keep their ids: a node that executed one
            # answers from its result table instead of running it again.
            try:
                self.fleet.issue_command(cmd.node, cmd.kind, cmd.body, cmd_id=cmd.cmd_id)
            except (CommandBacklogFull, DeltaUsageError) as exc:
                log.error("cannot re-issue command", cmd_id=cmd.cmd_id, error=str(exc))
                self.journal.append({"t": "done", "id": cmd.cmd_id, "status": "dropped"})
                continue
            if cmd.function:
                self.outstanding.setdefault(cmd.node, {})[cmd.function] = cmd.cmd_id
        self.role = "leader"

    # --- connections -------------------------------------------------------------------------

    async def _handle(self, stream: trio.SocketStream) -> None:
        if len(self.conns) >= self.settings.max_connections:
            self.counters["connections_refused"] += 1
            await trio.aclose_forcefully(stream)
            return
        assert self.fleet is not None
        conn = _Conn(stream, SchedulerSession(self.fleet, trio.current_time()))
        self.conns.add(conn)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._reader, conn)
                await self._writer(conn)
                nursery.cancel_scope.cancel()
        except Exception:
            # A bug in one connection costs that connection, not the fleet.
            log.exception("node connection failed", node=conn.node_id)
            self.counters["internal_errors"] += 1
        finally:
            conn.session.connection_lost(trio.current_time())
            self.conns.discard(conn)
            if conn.node_id is not None and self.by_node.get(conn.node_id) is conn:
                del self.by_node[conn.node_id]
            with trio.CancelScope(shield=True):
                await trio.aclose_forcefully(stream)

    async def _reader(self, conn: _Conn) -> None:
        try:
            while not conn.closing:
                data = await conn.stream.receive_some(RECEIVE_CHUNK)
                if not data:
                    conn.closing = True
                    break
                self.counters["bytes_in"] += len(data)
                conn.session.receive_data(data, trio.current_time())
                self._process(conn)
                conn.wake()  # the session may have frames to send (welcome, acks, commands)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            conn.closing = True
        finally:
            conn.wake()

    async def _writer(self, conn: _Conn) -> None:
        session = conn.session
        while True:
            conn.wake_event = trio.Event()
            session.tick(trio.current_time())
            self._process(conn)
            data = session.data_to_send()
            if data:
                with trio.move_on_after(SEND_TIMEOUT_S) as scope:
                    try:
                        await conn.stream.send_all(data)
                        self.counters["bytes_out"] += len(data)
                    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                        conn.closing = True
                if scope.cancelled_caught:
                    self.counters["send_timeouts"] += 1
                    conn.closing = True
            if conn.closing:
                return
            deadline = session.next_deadline()
            with trio.move_on_at(deadline if deadline is not None else math.inf):
                await conn.wake_event.wait()

    def _process(self, conn: _Conn) -> None:
        try:
            while (event := conn.session.next_event()) is not None:
                self._on_event(conn, event)
        except ProtocolError as exc:
            self.counters[f"protocol_error.{type(exc).__name__}"] += 1
            log.warning("node broke the protocol", node=conn.node_id, error=str(exc))
            conn.closing = True

    def _on_event(self, conn: _Conn, event: SchedulerEvent) -> None:
        assert self.fleet is not None
        if isinstance(event, DeltasApplied):
            reported = self.reported.setdefault(event.node_id, {})
            changed = False
            for c in event.changes:
                if c.kind == "function":
                    changed = True
                    if c.removed:
                        reported.pop(c.name, None)
                    else:
                        reported[c.name] = _reported(c.body)
            self.counters["deltas_applied"] += len(event.changes)
            if changed:
                self._mark(event.node_id)
        elif isinstance(event, CommandCompleted):
            self._completed(event)
        elif isinstance(event, NodeConnected):
            conn.node_id = event.node_id
            old = self.by_node.get(event.node_id)
            self.by_node[event.node_id] = conn
            if old is not None and old is not conn:
                old.wake()  # superseded: its session holds a bye to send
            self.counters[f"connects.{event.mode}"] += 1
            log.info(
                "node connected",
                node=event.node_id,
                boot=event.boot_id,
                mode=event.mode,
                cmd_mode=event.cmd_mode,
            )
            self._mark(event.node_id)
        elif isinstance(event, SnapshotApplied):
            view = self.fleet.view(event.node_id)
            self.reported[event.node_id] = {
                name: _reported(body)
                for kind, name, _, body in (view.entries() if view is not None else ())
                if kind == "function"
            }
            self.counters["snapshots"] += 1
            self._mark(event.node_id)
        elif isinstance(event, DigestMismatch):
            self.counters["digest_mismatches"] += 1
            log.warning("node state digest mismatch; resync requested", node=event.node_id)
        elif isinstance(event, CloseConnection):
            conn.closing = True

    def _mark(self, node_id: str) -> None:
        self._dirty.add(node_id)
        self._reconcile_now.set()
        self._changed.set()
        self._changed = trio.Event()

    def _completed(self, event: CommandCompleted) -> None:
        cmd = self.journal.state.pending.get(event.cmd_id)
        self.journal.append({"t": "done", "id": event.cmd_id, "status": event.status})
        self.counters[f"results.{event.status}"] += 1
        self.results[event.cmd_id] = {
            "node": event.node_id,
            "status": event.status,
            "result": event.result,
        }
        while len(self.results) > RESULTS_KEPT:
            self.results.popitem(last=False)
        if cmd is not None and cmd.function is not None:
            outstanding = self.outstanding.get(event.node_id, {})
            if outstanding.get(cmd.function) == event.cmd_id:
                del outstanding[cmd.function]
            failed = self.failed.setdefault(event.node_id, {})
            if event.status != "ok" and cmd.kind in ("deploy_function", "update_function"):
                failed[cmd.function] = (int(cmd.body.get("version", 0)), trio.current_time())
            else:
                failed.pop(cmd.function, None)
        if event.status != "ok":
            log.warning(
                "command failed on node",
                node=event.node_id,
                cmd_id=event.cmd_id,
                status=event.status,
                result=event.result,
            )
        self._mark(event.node_id)

    # --- commands and reconciliation -----------------------------------------------------------

    def issue(self, node_id: str, kind: str, body: Any, function: str | None = None) -> str:
        """Journal, then queue, one command for ``node_id``; returns its id."""
        if self.fleet is None:
            raise NotLeader("this scheduler is the standby")
        cmd_id = f"{self.settings.scheduler_id}:{self.epoch}:{next(self._cmd_seq)}"
        record: dict[str, Any] = {"t": "cmd", "id": cmd_id, "node": node_id, "kind": kind}
        record["body"] = body
        if function is not None:
            record["fn"] = function
        self.journal.append(record)
        try:
            self.fleet.issue_command(node_id, kind, body, cmd_id=cmd_id)
        except (CommandBacklogFull, DeltaUsageError):
            self.journal.append({"t": "done", "id": cmd_id, "status": "dropped"})
            raise
        if function is not None:
            self.outstanding.setdefault(node_id, {})[function] = cmd_id
        self.counters[f"issued.{kind}"] += 1
        conn = self.by_node.get(node_id)
        if conn is not None:
            conn.wake()
        return cmd_id

    def reconcile_node(self, node_id: str) -> int:
        """Issue what moves ``node_id`` towards the desired state; returns how many."""
        assert self.fleet is not None
        record = self.fleet.records.get(node_id)
        if (
            record is None
            or record.session is None
            or record.awaiting_snapshot
            or record.staging is not None
        ):
            return 0  # its view is not complete: wait for the snapshot
        actions = reconcile(
            node_id,
            self.reported.get(node_id, {}),
            self.journal.state.functions,
            self.outstanding.get(node_id, {}),
            self.failed.get(node_id, {}),
            trio.current_time(),
        )
        for action in actions:
            try:
                self.issue(node_id, action.kind, action.body, action.function)
            except (CommandBacklogFull, DeltaUsageError) as exc:
                log.error("cannot issue command", node=node_id, error=str(exc))
                break
        return len(actions)

    async def _timers(self) -> None:
        assert self.fleet is not None
        next_full = trio.current_time()
        while True:
            with trio.move_on_at(next_full):
                await self._reconcile_now.wait()
            self._reconcile_now = trio.Event()
            now = trio.current_time()
            for node_id in self.fleet.expire(now):
                log.warning("node expired: no frame within the lease", node=node_id)
                self.counters["expired"] += 1
            if now >= next_full:
                nodes = set(self.fleet.records)
                next_full = now + self.settings.reconcile_s
                self.counters["reconcile_rounds"] += 1
            else:
                nodes = self._dirty
            self._dirty = set()
            for node_id in nodes:
                self.reconcile_node(node_id)

    async def changed(self, deadline: float) -> None:
        """Wait until some node's state or a command result changed (or the deadline)."""
        with trio.move_on_at(deadline):
            await self._changed.wait()


def _reported(body: Any) -> Reported:
    body = body if isinstance(body, dict) else {}
    version = body.get("version")
    return Reported(
        version=version if isinstance(version, int) else 0,
        source=str(body.get("source", "config")),
        max_instances=body.get("max_instances"),
        min_instances=body.get("min_instances"),
    )
