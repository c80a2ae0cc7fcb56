"""Node connections of the central scheduler: one TCP (or mutual-TLS) link per node.

:func:`serve_node` is the handler :class:`~huselet.central.server.CentralScheduler`
gives its listeners. A standby answers with ``bye not_leader`` naming the
leader; a leader drives a :class:`~protocol.delta.SchedulerSession` per
connection with a reader task and a writer loop (timers at
``next_deadline()``), and turns the session's events into the scheduler's
view of each node (reported functions, command results). Functions over the
scheduler rather than its methods, so :mod:`huselet.central.server` keeps to
leadership terms, commands and reconciliation; they use its state directly.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import trio

from huselet.central.counters import CentralCounter
from huselet.central.placement import Reported
from huselet.log import get_logger
from protocol.delta import (
    CloseConnection,
    CommandCompleted,
    DeltasApplied,
    DigestMismatch,
    NodeConnected,
    SchedulerEvent,
    SchedulerSession,
    SnapshotApplied,
)
from protocol.delta.encode import encode_bye
from protocol.errors import ProtocolError

if TYPE_CHECKING:
    from huselet.central.server import CentralScheduler

# The scheduler's logger: these lines were always "central", and operators filter on it.
log = get_logger("central")

RECEIVE_CHUNK = 256 * 1024
SEND_TIMEOUT_S = 5.0
TLS_HANDSHAKE_TIMEOUT_S = 10.0
NOT_LEADER = "not_leader"  # BYE code of a standby (PROTOCOL.md §12)
SHUTDOWN = "shutdown"  # BYE code of a graceful stop


class NodeConn:
    """One node connection: its stream, its session and the writer's wake-up."""

    __slots__ = ("cancel_scope", "closing", "node_id", "session", "stream", "wake_event")

    def __init__(self, stream: trio.abc.Stream, session: SchedulerSession) -> None:
        self.stream = stream
        self.session = session
        self.wake_event = trio.Event()
        self.closing = False
        self.node_id: str | None = None
        self.cancel_scope = trio.CancelScope()  # cancelled when this scheduler steps down

    def wake(self) -> None:
        self.wake_event.set()


async def serve_node(central: CentralScheduler, stream: trio.SocketStream) -> None:
    """One node connection, from accept to close: refuse, redirect, or serve it."""
    if len(central.conns) >= central.settings.max_connections:
        central.counters[CentralCounter.CONNECTIONS_REFUSED] += 1
        await trio.aclose_forcefully(stream)
        return
    link: trio.abc.Stream = stream
    try:
        if central.settings.tls is not None:
            link = await _tls_handshake(central, stream)
        fleet = central.fleet
        if fleet is None or not central.backend.valid():
            await _redirect(central, link)
            return
        conn = NodeConn(link, SchedulerSession(fleet, trio.current_time()))
        central.conns.add(conn)
        try:
            with conn.cancel_scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(_reader, central, conn)
                    await _writer(central, conn)
                    nursery.cancel_scope.cancel()
        except Exception:
            # A bug in one connection costs that connection, not the fleet.
            log.exception("node connection failed", node=conn.node_id)
            central.counters[CentralCounter.INTERNAL_ERRORS] += 1
        finally:
            conn.session.connection_lost(trio.current_time())
            central.conns.discard(conn)
            if conn.node_id is not None and central.by_node.get(conn.node_id) is conn:
                del central.by_node[conn.node_id]
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
        central.counters[CentralCounter.HANDSHAKE_FAILED.by(type(exc).__name__)] += 1
        log.debug("node link refused", error=str(exc))
    finally:
        with trio.CancelScope(shield=True):
            await trio.aclose_forcefully(link)


async def _tls_handshake(
    central: CentralScheduler, stream: trio.SocketStream
) -> trio.SSLStream[trio.SocketStream]:
    """Mutual TLS: the node must present a certificate signed by the fleet CA."""
    assert central.settings.tls is not None
    tls = trio.SSLStream(stream, central.settings.tls, server_side=True)
    with trio.move_on_after(TLS_HANDSHAKE_TIMEOUT_S) as scope:
        await tls.do_handshake()
    if scope.cancelled_caught:
        raise trio.BrokenResourceError("TLS handshake timed out")
    return tls


async def _redirect(central: CentralScheduler, link: trio.abc.Stream) -> None:
    """A standby answers a node with ``bye not_leader`` naming the leader, then closes."""
    central.counters[CentralCounter.REDIRECTED] += 1
    leader = central.backend.leader_info() or {}
    address = leader.get("listen")
    if leader.get("scheduler_id") == central.settings.scheduler_id:
        address = None  # our own stale announcement
    if isinstance(address, str):
        frame = encode_bye(NOT_LEADER, f"standby; the leader is at {address}", address)
    else:
        frame = encode_bye(NOT_LEADER, "standby; no leader known yet")
    with trio.move_on_after(SEND_TIMEOUT_S):
        await link.send_all(frame)


async def _reader(central: CentralScheduler, conn: NodeConn) -> None:
    try:
        while not conn.closing:
            data = bytes(await conn.stream.receive_some(RECEIVE_CHUNK))
            if not data:
                conn.closing = True
                break
            central.counters[CentralCounter.BYTES_IN] += len(data)
            conn.session.receive_data(data, trio.current_time())
            _process(central, conn)
            conn.wake()  # the session may have frames to send (welcome, acks, commands)
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        conn.closing = True
    finally:
        conn.wake()


async def _writer(central: CentralScheduler, conn: NodeConn) -> None:
    session = conn.session
    while True:
        conn.wake_event = trio.Event()
        bye = None
        if central.shutting_down:
            bye = encode_bye(SHUTDOWN, "the scheduler is shutting down")
        elif not central.backend.valid():
            # The lease may have run out (e.g. this process was paused): send
            # nothing more than a bye — no heartbeat that would renew the node's lease.
            bye = encode_bye(NOT_LEADER, "leadership lost")
        if bye is not None:
            with trio.move_on_after(1.0):
                try:
                    await conn.stream.send_all(bye)
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                    pass
            conn.closing = True
            return
        session.tick(trio.current_time())
        _process(central, conn)
        data = session.data_to_send()
        if data:
            with trio.move_on_after(SEND_TIMEOUT_S) as scope:
                try:
                    await conn.stream.send_all(data)
                    central.counters[CentralCounter.BYTES_OUT] += len(data)
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                    conn.closing = True
            if scope.cancelled_caught:
                central.counters[CentralCounter.SEND_TIMEOUTS] += 1
                conn.closing = True
        if conn.closing:
            return
        deadline = session.next_deadline()
        with trio.move_on_at(deadline if deadline is not None else math.inf):
            await conn.wake_event.wait()


def _process(central: CentralScheduler, conn: NodeConn) -> None:
    try:
        while (event := conn.session.next_event()) is not None:
            _on_event(central, conn, event)
    except ProtocolError as exc:
        central.counters[CentralCounter.PROTOCOL_ERROR.by(type(exc).__name__)] += 1
        log.warning("node broke the protocol", node=conn.node_id, error=str(exc))
        conn.closing = True


def _on_event(central: CentralScheduler, conn: NodeConn, event: SchedulerEvent) -> None:
    if isinstance(event, DeltasApplied):
        _deltas_applied(central, event)
    elif isinstance(event, CommandCompleted):
        central.command_completed(event)
    elif isinstance(event, NodeConnected):
        _node_connected(central, conn, event)
    elif isinstance(event, SnapshotApplied):
        _snapshot_applied(central, event)
    elif isinstance(event, DigestMismatch):
        central.counters[CentralCounter.DIGEST_MISMATCHES] += 1
        log.warning("node state digest mismatch; resync requested", node=event.node_id)
    elif isinstance(event, CloseConnection):
        conn.closing = True


def _node_connected(central: CentralScheduler, conn: NodeConn, e: NodeConnected) -> None:
    """The handshake completed: this connection now carries the node's commands."""
    conn.node_id = e.node_id
    old = central.by_node.get(e.node_id)
    central.by_node[e.node_id] = conn
    if old is not None and old is not conn:
        old.wake()  # superseded: its session holds a bye to send
    central.counters[CentralCounter.CONNECTS.by(e.mode)] += 1
    log.info("node connected", node=e.node_id, boot=e.boot_id, mode=e.mode, cmd_mode=e.cmd_mode)
    central.mark(e.node_id)


def _deltas_applied(central: CentralScheduler, event: DeltasApplied) -> None:
    """Fold the node's reported function changes into what placement sees."""
    reported = central.reported.setdefault(event.node_id, {})
    changed = False
    for c in event.changes:
        if c.kind == "function":
            changed = True
            if c.removed:
                reported.pop(c.name, None)
            else:
                reported[c.name] = _reported(c.body)
    central.counters[CentralCounter.DELTAS_APPLIED] += len(event.changes)
    if changed:
        central.mark(event.node_id)


def _snapshot_applied(central: CentralScheduler, event: SnapshotApplied) -> None:
    """The node's whole view was replaced: rebuild its reported functions from it."""
    assert central.fleet is not None
    view = central.fleet.view(event.node_id)
    central.reported[event.node_id] = {
        name: _reported(body)
        for kind, name, _, body in (view.entries() if view is not None else ())
        if kind == "function"
    }
    central.counters[CentralCounter.SNAPSHOTS] += 1
    central.mark(event.node_id)


def _reported(body: Any) -> Reported:
    body = body if isinstance(body, dict) else {}
    version = body.get("version")
    return Reported(
        version=version if isinstance(version, int) else 0,
        source=str(body.get("source", "config")),
        max_instances=body.get("max_instances"),
        min_instances=body.get("min_instances"),
    )
