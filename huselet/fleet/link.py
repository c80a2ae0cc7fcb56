"""SchedulerLink: the node's connection to the central scheduler, over trio TCP.

One :class:`~protocol.delta.NodeSession` lives as long as the daemon (one
boot); connections come and go beneath it. The link:

- dials the configured addresses in :class:`~protocol.delta.SchedulerAddressRotation`
  order (shuffled once; a failed address rotates to the end; full-jitter
  backoff that only grows once every address failed);
- per connection runs a reader task (bytes → machine → events) and a writer
  loop (machine timers at ``next_deadline()``, bytes out with a send deadline);
- hands commands, in order, to one worker that executes them through
  :class:`~huselet.fleet.commands.FleetCommands` and reports the results;
- never stops the node: with every scheduler down it keeps dialling with
  backoff while the daemon serves what it has (static stability), and a
  scheduler that breaks the protocol loses only its connection (the error is
  counted by class);
- speaks mutual TLS when ``[scheduler] tls_*`` is set (the scheduler must
  present a certificate of the fleet CA; so must the node);
- keeps the highest accepted epoch on disk (:mod:`huselet.fleet.epoch`) and
  runs a command only once its epoch is durable, so fencing survives a restart;
- follows a standby's ``bye not_leader`` hint: the named leader is dialled next.
"""

from __future__ import annotations

import math
import random
import ssl
import uuid
from collections import Counter
from collections.abc import Callable
from typing import Any

import trio

from huselet.config import SchedulerLinkSettings, TcpAddress
from huselet.dispatch.api import ObservedDispatcher
from huselet.fleet.commands import CommandFailed, FleetCommands
from huselet.fleet.epoch import EpochFile
from huselet.fleet.state import NodeStateModel
from huselet.log import get_logger
from huselet.tls import client_context
from protocol.delta import (
    CloseConnection,
    CommandReceived,
    CommandRefused,
    Connected,
    DeltaUsageError,
    LeaseExpired,
    LeaseGranted,
    NodeConfig,
    NodeEvent,
    NodeSession,
    SchedulerAddressRotation,
    SnapshotSent,
)
from protocol.errors import ProtocolError

log = get_logger("fleet")

RECEIVE_CHUNK = 256 * 1024
COMMAND_TIMEOUT_S = 60.0  # one command (a deploy binds a socket; a prefetch may fetch)
CLOSE_TIMEOUT_S = 1.0  # time to write a bye before the socket is closed
NOT_LEADER_BACKOFF_S = 1.0  # longest wait after a standby's bye not_leader


class SchedulerLink:
    """Keeps the node connected to one of the central scheduler's addresses."""

    def __init__(
        self,
        settings: SchedulerLinkSettings,
        dispatcher: ObservedDispatcher,
        commands_factory: Callable[[Callable[[str], None]], FleetCommands],
        *,
        clock: Callable[[], float] = trio.current_time,
        rng: random.Random | None = None,
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.boot_id = uuid.uuid4().hex
        self.session = NodeSession(
            NodeConfig(
                node_id=settings.node_id,
                boot_id=self.boot_id,
                max_batch_delay=settings.batch_delay_ms / 1000,
                handshake_timeout=settings.handshake_timeout_ms / 1000,
                silent_heartbeats=float(settings.silent_heartbeats),
            )
        )
        self.epochs = EpochFile(settings.epoch_file)
        # Fencing across restarts: refuse the epochs this node had already left behind.
        self.session.state.highest_epoch = self.epochs.persisted
        self._tls: ssl.SSLContext | None = None
        if settings.tls is not None:
            self._tls = client_context(settings.tls.ca, settings.tls.cert, settings.tls.key)
        self.rotation = SchedulerAddressRotation(
            [str(a) for a in settings.addresses],
            rng=rng or random.Random(),
            base_delay=settings.backoff_base_ms / 1000,
            max_delay=settings.backoff_max_ms / 1000,
        )
        self._addresses = {str(a): a for a in settings.addresses}
        self._wake = trio.Event()
        self.model = NodeStateModel(
            self.session,
            memory_mb=settings.memory_mb,
            labels=settings.labels,
            clock=clock,
            wake=self.wake,
        )
        self.model.attach(dispatcher)
        self.commands = commands_factory(self.model.set_placements)
        self.model.set_placements(self.commands.placements)
        self._closing = False
        self._not_leader = False  # the last connection ended with bye not_leader
        self._last_error: ProtocolError | None = None
        self._commands_in, self._commands_out = trio.open_memory_channel[CommandReceived](
            self.session.config.max_inflight
        )
        # observability
        self.state = "starting"  # connecting | handshake | established | backoff
        self.address: str | None = None
        self.connected_at: float | None = None
        self.connects = 0
        self.disconnects = 0
        self.errors: Counter[str] = Counter()  # protocol and transport errors by class
        self.refused: Counter[str] = Counter()  # commands answered by the machine itself
        self.last_close: str | None = None
        self.last_resync: dict[str, Any] | None = None
        self.resyncs = 0
        self.redirects = 0  # bye not_leader hints followed
        self.bytes_in = self.bytes_out = 0
        self._acked_seq = 0
        self._progress_at = clock()

    def wake(self) -> None:
        """The session has something new (a change, a result): the writer must look."""
        self._wake.set()

    # --- lifecycle -----------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._command_worker)
            await self.commands.restore()
            task_status.started()
            while True:
                await self._wait_for_retry()
                address = self.rotation.current()
                self.address = address
                self.state = "connecting"
                stream = await self._dial(self._addresses[address])
                if stream is None:
                    self._not_leader = False  # a dead address proves no scheduler alive
                else:
                    try:
                        await self._serve(stream, address)
                    except Exception:
                        # A bug in handling one connection costs that connection, not the node.
                        log.exception("scheduler link failed", address=address)
                        self.errors["internal"] += 1
                    finally:
                        self.session.connection_lost(self.clock())
                        self.connected_at = None
                        with trio.CancelScope(shield=True):
                            await trio.aclose_forcefully(stream)
                cap = NOT_LEADER_BACKOFF_S if self._not_leader else None
                self.rotation.failed(address, self.clock(), cap=cap)
                self.state = "backoff"

    async def _wait_for_retry(self) -> None:
        """Back off until the rotation says dial; the lease timer keeps running meanwhile."""
        while True:
            now = self.clock()
            if now >= self.rotation.retry_at:
                return
            deadline = self.rotation.retry_at
            lease = self.session.next_deadline()
            if lease is not None:
                deadline = min(deadline, lease)
            await trio.sleep_until(deadline)
            self.session.tick(self.clock())
            self._process_events(None)

    async def _dial(self, address: TcpAddress) -> trio.abc.Stream | None:
        with trio.move_on_after(self.settings.connect_timeout_ms / 1000):
            try:
                stream = await trio.open_tcp_stream(address.host, address.port)
            except OSError as exc:
                self.errors[type(exc).__name__] += 1
                log.debug("scheduler unreachable", address=str(address), error=str(exc))
                return None
            if self._tls is None:
                return stream
            assert self.settings.tls is not None
            name = self.settings.tls.server_name or address.host
            tls = trio.SSLStream(stream, self._tls, server_hostname=name)
            try:
                await tls.do_handshake()
            except (trio.BrokenResourceError, OSError) as exc:
                # A scheduler without a certificate of the fleet CA is not one.
                self.errors["TlsHandshake"] += 1
                log.warning("scheduler TLS handshake failed", address=str(address), error=str(exc))
                await trio.aclose_forcefully(tls)
                return None
            return tls
        self.errors["ConnectTimeout"] += 1
        return None

    async def _serve(self, stream: trio.abc.Stream, address: str) -> None:
        self._closing = False
        self._not_leader = False
        self._last_error = None
        self.state = "handshake"
        now = self.clock()
        self.model.sync(now)
        self.session.connect(now)
        async with trio.open_nursery() as conn:
            conn.start_soon(self._reader, stream)
            await self._writer(stream, address)
            conn.cancel_scope.cancel()
        if self.state == "established":
            self.disconnects += 1
        log.info("scheduler link closed", address=address, reason=self.last_close)

    async def _reader(self, stream: trio.abc.Stream) -> None:
        try:
            while not self._closing:
                data = bytes(await stream.receive_some(RECEIVE_CHUNK))
                if not data:
                    self._close("the scheduler closed the connection")
                    return
                self.bytes_in += len(data)
                self.session.receive_data(data, self.clock())
                self._process_events(self.address)
                self._wake.set()
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            self.errors[type(exc).__name__] += 1
            self._close(f"receive failed: {exc}")
        finally:
            self._wake.set()

    async def _writer(self, stream: trio.abc.Stream, address: str) -> None:
        session = self.session
        while True:
            self._wake = trio.Event()
            now = self.clock()
            self.model.sync(now)
            session.tick(now)
            self._process_events(address)
            data = session.data_to_send()
            if data:
                timeout = CLOSE_TIMEOUT_S if self._closing else self.settings.send_timeout_ms / 1000
                with trio.move_on_after(timeout) as scope:
                    try:
                        await stream.send_all(data)
                        self.bytes_out += len(data)
                    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                        self.errors[type(exc).__name__] += 1
                        self._close(f"send failed: {exc}")
                if scope.cancelled_caught:
                    self.errors["SendTimeout"] += 1
                    self._close("the scheduler does not read")
            self._track_acks(now)
            if self._closing:
                return
            deadline = session.next_deadline()
            with trio.move_on_at(deadline if deadline is not None else math.inf):
                await self._wake.wait()

    def _close(self, reason: str) -> None:
        if not self._closing:
            self._closing = True
            self.last_close = reason

    # --- events ------------------------------------------------------------------------------

    def _process_events(self, address: str | None) -> None:
        try:
            while (event := self.session.next_event()) is not None:
                self._on_event(event, address)
        except ProtocolError as exc:
            # The scheduler (or the bytes claiming to be it) broke the protocol:
            # this connection ends (after the machine's bye); the node goes on.
            if exc is self._last_error:
                return  # the machine repeats its stored error until the connection is gone
            self._last_error = exc
            self.errors[type(exc).__name__] += 1
            log.warning("scheduler broke the protocol", address=address, error=str(exc))
            self._close(f"{type(exc).__name__}: {exc}")

    def _on_event(self, event: NodeEvent, address: str | None) -> None:
        now = self.clock()
        if isinstance(event, CommandReceived):
            try:
                self._commands_in.send_nowait(event)
            except trio.WouldBlock:
                # The scheduler ignores our window: refuse rather than queue without bound.
                self._finish(event.cmd_id, CommandFailed("too many commands", "busy").payload())
        elif isinstance(event, Connected):
            assert address is not None
            self.rotation.succeeded(address)
            self._nursery.start_soon(self.epochs.persist, event.epoch)
            self.state = "established"
            self.connected_at = now
            self.connects += 1
            log.info(
                "scheduler link established",
                address=address,
                scheduler=event.scheduler_id,
                epoch=event.epoch,
                mode=event.mode,
                cmd_mode=event.cmd_mode,
            )
        elif isinstance(event, SnapshotSent):
            self.resyncs += 1
            self.last_resync = {"at": now, "reason": event.reason, "count": event.count}
        elif isinstance(event, LeaseGranted):
            self.commands.set_lease(True)
        elif isinstance(event, LeaseExpired):
            log.warning("scheduler lease expired: no new placements until it returns")
            self.commands.set_lease(False)
        elif isinstance(event, CommandRefused):
            self.refused[event.status] += 1
        elif isinstance(event, CloseConnection):
            self._not_leader = event.code == "not_leader"
            # A standby names the leader: dial it next instead of the next in line.
            if (
                event.code == "not_leader"
                and event.leader is not None
                and event.leader != address
                and self.rotation.prefer(event.leader)
            ):
                self.redirects += 1
            self._close(f"{event.code}: {event.reason}")

    def _track_acks(self, now: float) -> None:
        replay = self.session.state.replay
        acked = replay.first_seq - 1
        if acked != self._acked_seq or not len(replay):
            self._acked_seq = acked
            self._progress_at = now

    # --- commands ------------------------------------------------------------------------------

    async def _command_worker(self) -> None:
        # One worker, so commands take effect in the order the scheduler sent them
        # (a deploy, then an update, then a remove of the same function).
        async for event in self._commands_out:
            ok = True
            # Durable before it takes effect: after a restart this epoch's
            # predecessors stay refused (fencing, PROTOCOL.md §9).
            await self.epochs.persist(event.epoch)
            try:
                with trio.fail_after(COMMAND_TIMEOUT_S):
                    payload: dict[str, Any] = await self.commands.execute(
                        event.cmd_id, event.kind, event.body
                    )
            except CommandFailed as exc:
                ok, payload = False, exc.payload()
            except trio.TooSlowError:
                ok = False
                payload = CommandFailed("the command timed out", "timeout").payload()
            except Exception:
                log.exception("command failed inside the node", kind=event.kind)
                ok = False
                payload = CommandFailed("internal error; see the node's log", "internal").payload()
            self._finish(event.cmd_id, payload, ok=ok)

    def _finish(self, cmd_id: str, payload: dict[str, Any], *, ok: bool = False) -> None:
        try:
            self.session.complete_command(cmd_id, payload, self.clock(), ok=ok)
        except DeltaUsageError:
            # The payload was too large to carry: report that instead.
            small = {"error": "result_too_large", "message": "the result was too large"}
            self.session.complete_command(cmd_id, small, self.clock(), ok=False)
        self.wake()

    # --- inspection ------------------------------------------------------------------------------

    def describe(self) -> dict[str, Any]:
        """For ``huselet ctl scheduler``."""
        now = self.clock()
        st = self.session.state
        replay = st.replay
        unacked = len(replay)
        return {
            "mode": "fleet",
            "node_id": self.settings.node_id,
            "boot_id": self.boot_id,
            "state": self.state,
            "address": self.address,
            "addresses": self.rotation.addresses,
            "scheduler_id": self.session.scheduler_id or None,
            "epoch": st.highest_epoch,
            "connected_s": None if self.connected_at is None else round(now - self.connected_at, 3),
            "retry_in_s": round(max(0.0, self.rotation.retry_at - now), 3)
            if self.state == "backoff"
            else None,
            "seq": replay.last_seq,
            "acked": replay.first_seq - 1,
            "unacked_frames": unacked,
            "pending_changes": len(st.batch),
            "lag_s": round(now - self._progress_at, 3) if unacked else 0.0,
            "cmd_stream": st.cmd_stream or None,
            "cmd_applied": st.cmd_applied,
            "resources": st.count,
            "lease": {
                "held": st.lease_held,
                "expires_in_s": round(st.lease_deadline - now, 3) if st.lease_held else None,
            },
            "placements": self.commands.placements,
            "last_resync": None
            if self.last_resync is None
            else {
                "age_s": round(now - self.last_resync["at"], 3),
                "reason": self.last_resync["reason"],
                "count": self.last_resync["count"],
            },
            "resyncs": self.resyncs,
            "redirects": self.redirects,
            "epoch_persisted": self.epochs.persisted,
            "tls": self._tls is not None,
            "connects": self.connects,
            "disconnects": self.disconnects,
            "last_close": self.last_close,
            "errors": dict(self.errors),
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
            "changes": self.model.changes,
            "dropped_changes": self.model.dropped,
            "commands": {
                "executed": dict(self.commands.executed),
                "failed": dict(self.commands.failed),
                "refused": dict(self.refused),
                "duplicates": self.commands.duplicates,
                "duplicate_applies": self.commands.duplicate_applies,
                "deployed": {n: e["version"] for n, e in sorted(self.commands.deployed.items())},
            },
        }
