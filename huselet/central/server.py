"""CentralScheduler: one process of the reference central scheduler (standby, then leader).

Life of a process: listen for nodes (a standby answers each with ``bye
not_leader`` naming the leader) → campaign through its
:class:`~huselet.central.backend.Backend` (an etcd lease, or the dev-mode
local lock) → as leader: load the desired state (functions, commands without
a result) from the store → re-issue those commands with their original ids →
serve nodes. Per node connection a :class:`SchedulerSession` is driven by a
reader task and a writer loop (timers at ``next_deadline()``), in
:mod:`huselet.central.sessions`; one
:class:`FleetState` holds every node's record and view; a timer expires
silent nodes and reconciles desired against reported state
(:mod:`huselet.central.placement`).

When the backend says leadership is lost (the etcd lease could not be renewed
in time), the term ends at once: the writer loops stop sending (they check
:meth:`Backend.valid` before every frame), node sessions are closed, the
in-memory term state is dropped, and the process campaigns again.

Every command is committed to the store before its frame can leave
(:meth:`CentralScheduler.issue_many`), and every result is recorded when it
arrives (batched, :meth:`CentralScheduler._record_results`), so a standby
that takes over knows exactly which commands still need an answer.
"""

from __future__ import annotations

import itertools
import ssl
from collections import Counter, OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from huselet.central.backend import Backend, LocalBackend
from huselet.central.counters import CentralCounter
from huselet.central.errors import Deposed, LeadershipLost, NotLeader
from huselet.central.placement import Reported, reconcile
from huselet.central.sessions import NodeConn, serve_node
from huselet.log import get_logger
from protocol.delta import (
    CommandBacklogFull,
    CommandCompleted,
    DeltaUsageError,
    FleetState,
    SchedulerConfig,
)

log = get_logger("central")

RESULTS_KEPT = 4096
SHUTDOWN_GRACE_S = 1.0


@dataclass(frozen=True)
class CentralSettings:
    scheduler_id: str
    listen_host: str
    listen_port: int
    state_dir: Path | None = None  # dev mode (no etcd): the local journal's directory
    advertise: tuple[str, int] | None = None  # the address nodes dial (default: listen)
    admin_url: str | None = None  # announced to operators
    tls: ssl.SSLContext | None = None  # node links: mutual TLS (huselet.tls)
    heartbeat_s: float = 1.0
    lease_s: float = 10.0
    reconcile_s: float = 1.0
    fsync: bool = True
    max_connections: int = 10_000


class CentralScheduler:
    def __init__(self, settings: CentralSettings, backend: Backend | None = None) -> None:
        self.settings = settings
        if backend is None:
            if settings.state_dir is None:
                raise ValueError("a backend or a state directory is needed")
            backend = LocalBackend(settings.state_dir, fsync=settings.fsync)
        self.backend = backend
        self.store = backend.store
        self.role = "standby"
        self.epoch = 0
        self.terms = 0  # leadership terms held by this process
        self.fleet: FleetState | None = None
        self.leading = trio.Event()
        self.listen_port: int | None = None
        self.conns: set[NodeConn] = set()
        self.by_node: dict[str, NodeConn] = {}
        self._reset_term()
        self.results: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self.counters: Counter[str] = Counter()
        self._changed = trio.Event()
        self._cmd_seq = itertools.count(1)
        self.shutting_down = False  # the writers send ``bye shutdown`` (huselet.central.sessions)

    def _reset_term(self) -> None:
        self.reported: dict[str, dict[str, Reported]] = {}  # node -> function -> as reported
        self.outstanding: dict[str, dict[str, str]] = {}  # node -> function -> cmd_id
        self.failed: dict[str, dict[str, tuple[int, float]]] = {}  # node -> fn -> (version, when)
        self._dirty: set[str] = set()
        self._reconcile_now = trio.Event()
        self._done: list[dict[str, Any]] = []  # results to record in the store
        self._done_ready = trio.Event()

    @property
    def advertise(self) -> str:
        host, port = self.settings.advertise or (self.settings.listen_host, self.listen_port)
        return f"{host}:{port}"

    def leader_info(self) -> dict[str, Any] | None:
        return self.backend.leader_info()

    # --- lifecycle ---------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Listen; campaign; lead until leadership is lost; campaign again. Until cancelled."""
        listeners = await trio.open_tcp_listeners(
            self.settings.listen_port, host=self.settings.listen_host
        )
        self.listen_port = listeners[0].socket.getsockname()[1]
        try:
            async with trio.open_nursery() as nursery:
                # Standbys listen too: they answer a node with a BYE naming the leader.
                nursery.start_soon(trio.serve_listeners, self._handle, listeners)
                task_status.started()
                while True:
                    log.info("central standby", scheduler=self.settings.scheduler_id)
                    announcement = {
                        "scheduler_id": self.settings.scheduler_id,
                        "listen": self.advertise,
                    } | ({"admin": self.settings.admin_url} if self.settings.admin_url else {})
                    self.epoch = await self.backend.campaign(announcement)
                    try:
                        await self._lead()
                    finally:
                        with trio.CancelScope(shield=True):
                            await self._step_down()
        finally:
            with trio.CancelScope(shield=True):
                await self.backend.close()

    async def shutdown(self) -> None:
        """Graceful stop: every node gets ``bye shutdown`` (bounded), then the caller cancels."""
        self.shutting_down = True
        for conn in list(self.conns):
            conn.wake()
        with trio.move_on_after(SHUTDOWN_GRACE_S):
            # Shutdown only, bounded by SHUTDOWN_GRACE_S: sessions leave on their own after bye.
            while self.conns:  # noqa: ASYNC110
                await trio.sleep(0.01)

    async def _lead(self) -> None:
        """One leadership term; returns when it is lost."""
        self.terms += 1
        s = self.settings
        fleet = FleetState(
            SchedulerConfig(
                scheduler_id=s.scheduler_id,
                epoch=self.epoch,
                heartbeat_interval=s.heartbeat_s,
                lease_ttl=s.lease_s,
            )
        )
        self._reset_term()
        try:
            state = await self.store.load()
        except Exception as exc:
            log.error("cannot load the desired state; stepping down", error=str(exc))
            await self.backend.step_down()  # let another scheduler (or a retry) take over
            await trio.sleep(0.5)
            return
        for cmd in list(state.pending.values()):
            # The predecessor's commands keep their ids: a node that executed one
            # answers from its result table instead of running it again.
            try:
                fleet.issue_command(cmd.node, cmd.kind, cmd.body, cmd_id=cmd.cmd_id)
            except (CommandBacklogFull, DeltaUsageError) as exc:
                log.error("cannot re-issue command", cmd_id=cmd.cmd_id, error=str(exc))
                self._record_done(cmd.cmd_id, "dropped")
                continue
            if cmd.function:
                self.outstanding.setdefault(cmd.node, {})[cmd.function] = cmd.cmd_id
        self.fleet = fleet
        self.role = "leader"
        log.info(
            "central leader",
            scheduler=s.scheduler_id,
            epoch=self.epoch,
            listen=self.advertise,
            functions=len(state.functions),
            reissued=len(state.pending),
        )
        self.leading.set()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._hold, nursery.cancel_scope)
            nursery.start_soon(self._timers)
            nursery.start_soon(self._record_results, nursery.cancel_scope)

    async def _hold(self, scope: trio.CancelScope) -> None:
        try:
            await self.backend.hold()
        except LeadershipLost as exc:
            self.counters[CentralCounter.LEADERSHIP_LOST] += 1
            log.warning("stepping down", scheduler=self.settings.scheduler_id, reason=str(exc))
        scope.cancel()

    async def _step_down(self) -> None:
        """Stop issuing commands and close every node session (a standby has none)."""
        was_leader = self.fleet is not None
        self.fleet = None
        self.role = "standby"
        self.leading = trio.Event()
        for conn in list(self.conns):
            conn.closing = True
            conn.cancel_scope.cancel()
        self.by_node.clear()
        self._reset_term()
        self._changed.set()
        self._changed = trio.Event()
        if was_leader:
            await self.backend.step_down()
            log.info("central stepped down", scheduler=self.settings.scheduler_id)

    # --- connections -------------------------------------------------------------------------

    async def _handle(self, stream: trio.SocketStream) -> None:
        # A method, not a partial: the listener names each connection's task after it.
        await serve_node(self, stream)

    # --- node state and command results ---------------------------------------------------------

    def _mark(self, node_id: str) -> None:
        self._dirty.add(node_id)
        self._reconcile_now.set()
        self._changed.set()
        self._changed = trio.Event()

    def _record_done(self, cmd_id: str, status: str) -> None:
        self._done.append({"t": "done", "id": cmd_id, "status": status})
        self._done_ready.set()

    async def _record_results(self, scope: trio.CancelScope) -> None:
        """Write results to the store in batches (a lost one is only re-delivered: §9)."""
        backoff = 0.05
        while True:
            await self._done_ready.wait()
            self._done_ready = trio.Event()
            batch, self._done = self._done, []
            try:
                await self.store.commit(batch)
                backoff = 0.05
            except Deposed as exc:
                log.warning("results not recorded: deposed", error=str(exc))
                scope.cancel()
                return
            except Exception as exc:
                log.warning("results not recorded yet; retrying", error=str(exc))
                self._done = batch + self._done
                self._done_ready.set()
                await trio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)

    def command_completed(self, event: CommandCompleted) -> None:
        cmd = self.store.state.pending.get(event.cmd_id)
        self._record_done(event.cmd_id, event.status)
        self.counters[CentralCounter.RESULTS.by(event.status)] += 1
        outcome = {"node": event.node_id, "status": event.status, "result": event.result}
        self.results[event.cmd_id] = outcome
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
            log.warning("command failed on node", cmd_id=event.cmd_id, **outcome)
        self._mark(event.node_id)

    # --- commands and reconciliation -----------------------------------------------------------

    async def issue(self, node_id: str, kind: str, body: Any, function: str | None = None) -> str:
        """Store, then queue, one command for ``node_id``; returns its id."""
        (cmd_id,) = await self.issue_many(node_id, [(kind, body, function)])
        return cmd_id

    async def issue_many(
        self, node_id: str, commands: list[tuple[str, Any, str | None]]
    ) -> list[str]:
        """Store ``commands`` (kind, body, function) in one commit, then queue them in order.

        Raises :class:`NotLeader` (or the store's ``Deposed``) when this process
        does not lead, ``CommandBacklogFull`` when the node's table is full.
        """
        fleet = self.fleet
        if fleet is None or not self.backend.valid():
            raise NotLeader("this scheduler is not the leader")
        pending = len(fleet.records[node_id].pending) if node_id in fleet.records else 0
        if pending + len(commands) > fleet.config.max_pending:
            raise CommandBacklogFull(f"node {node_id!r} has {pending} commands pending")
        records = []
        for kind, body, function in commands:
            cmd_id = f"{self.settings.scheduler_id}:{self.epoch}:{next(self._cmd_seq)}"
            record: dict[str, Any] = {"t": "cmd", "id": cmd_id, "node": node_id, "kind": kind}
            record["body"] = body
            if function is not None:
                record["fn"] = function
            records.append(record)
        await self.store.commit(records)
        if fleet is not self.fleet:
            raise NotLeader("leadership was lost while the commands were stored")
        ids = []
        for record in records:
            try:
                fleet.issue_command(node_id, record["kind"], record["body"], cmd_id=record["id"])
            except (CommandBacklogFull, DeltaUsageError) as exc:
                log.error("cannot queue a stored command", cmd_id=record["id"], error=str(exc))
                self._record_done(record["id"], "dropped")
                continue
            if record.get("fn") is not None:
                self.outstanding.setdefault(node_id, {})[record["fn"]] = record["id"]
            self.counters[CentralCounter.ISSUED.by(record["kind"])] += 1
            ids.append(record["id"])
        conn = self.by_node.get(node_id)
        if conn is not None:
            conn.wake()
        return ids

    async def reconcile_node(self, node_id: str) -> int:
        """Issue what moves ``node_id`` towards the desired state; returns how many."""
        fleet = self.fleet
        if fleet is None:
            return 0
        record = fleet.records.get(node_id)
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
            self.store.state.functions,
            self.outstanding.get(node_id, {}),
            self.failed.get(node_id, {}),
            trio.current_time(),
        )
        if not actions:
            return 0
        room = fleet.config.max_pending - len(record.pending)
        actions = actions[: max(0, room)]
        try:
            await self.issue_many(node_id, [(a.kind, a.body, a.function) for a in actions])
        except (CommandBacklogFull, DeltaUsageError) as exc:
            log.error("cannot issue command", node=node_id, error=str(exc))
            return 0
        return len(actions)

    async def _timers(self) -> None:
        fleet = self.fleet
        assert fleet is not None
        next_full = trio.current_time()
        while True:
            with trio.move_on_at(next_full):
                await self._reconcile_now.wait()
            self._reconcile_now = trio.Event()
            now = trio.current_time()
            for node_id in fleet.expire(now):
                log.warning("node expired: no frame within the lease", node=node_id)
                self.counters[CentralCounter.EXPIRED] += 1
            if now >= next_full:
                nodes = set(fleet.records)
                next_full = now + self.settings.reconcile_s
                self.counters[CentralCounter.RECONCILE_ROUNDS] += 1
            else:
                nodes = self._dirty
            self._dirty = set()
            for node_id in sorted(nodes):
                try:
                    await self.reconcile_node(node_id)
                except Deposed:
                    return  # _hold or _record_results ends the term
                except Exception as exc:
                    # The store is slow or unreachable: try again on the next round.
                    self.counters[CentralCounter.RECONCILE_ERRORS] += 1
                    log.warning("reconcile failed", node=node_id, error=str(exc))
                    self._dirty.add(node_id)
                    break

    def mark(self, node_id: str) -> None:
        """Reconcile ``node_id`` soon (its desired state changed)."""
        self._mark(node_id)

    async def changed(self, deadline: float) -> None:
        """Wait until some node's state or a command result changed (or the deadline)."""
        with trio.move_on_at(deadline):
            await self._changed.wait()
