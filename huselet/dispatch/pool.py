"""FunctionPool: one function's request buffer and the lifecycle of its instances.

Scaling rule: when queued requests outnumber the instances that are idle or
already starting, start more — while the request waits, within
``max_instances``. An idle instance is reaped after ``idle_timeout_ms``
(keeping ``min_instances``).

Lifecycle of one instance (:meth:`FunctionPool._lifecycle`)::

    STARTING ─ runtime.start() ─ link HELLO+token ─ READY ─▶ IDLE ⇄ BUSY
        │ (exit, FATAL, start timeout)                        │ (idle timeout,
        ▼                                                     ▼  link closed, deadline
     start failed                                          STOPPING  overrun, node stop)

An instance also ends when, idle, it misses its heartbeat (PING unanswered),
or when found frozen (SIGSTOP) while busy. Every in-flight invocation of an
instance that ends is completed with a clear :class:`InstanceLost` error —
never left waiting — unless it can safely run elsewhere: its request never
fully reached the instance, or the function is ``idempotent`` (once).
The per-instance record lives in :mod:`huselet.dispatch.instance`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio

from huselet.config import FunctionSettings
from huselet.config.health import HealthSettings
from huselet.dispatch.buffer import RequestBuffer
from huselet.dispatch.instance import (
    CodeProvider,
    DirectoryCode,
    InstanceRecord,
    InstanceState,
    stopped_by_signal,
)
from huselet.dispatch.invocation import Invocation, InvokeResult
from huselet.dispatch.links import token_matches
from huselet.errors import (
    BadRequest,
    Draining,
    HandlerError,
    HuseletError,
    InstanceLost,
    InstanceStartFailed,
    Unavailable,
)
from huselet.health.breaker import BreakerState, CircuitBreaker
from huselet.log import get_logger
from huselet.runtime.base import InstanceSpec, Runtime, StartFailed
from protocol.errors import ProtocolError
from protocol.link import (
    ERROR_INVALID_EVENT,
    FATAL,
    KIND_JSON,
    KIND_TEXT,
    PING_FRAME,
    PULL,
    READY,
    RESULT,
    SHUTDOWN_FRAME,
    Fatal,
    Pull,
    Request,
    Result,
    message_type,
)

log = get_logger("pool")

CONTENT_TYPES = {
    KIND_JSON: "application/json",
    KIND_TEXT: "text/plain; charset=utf-8",
}
STOP_GRACE_S = 2.0
# Stop reasons that are the node's decision, not a fault of the instance: the
# stop is graceful (SHUTDOWN first) and the breaker does not count it.
PLANNED_STOPS = frozenset(
    {
        "idle",
        "reaped",
        "node stopping",
        "function retired",
        "served",
        "start failed",
        "start cancelled",
    }
)
# Stop reasons after which an idempotent request may still be retried.
NO_RETRY_STOPS = frozenset({"node stopping", "function retired"})
REAP_LIMIT_S = 5.0  # after a kill, how long a runtime may take to report the exit
EXIT_DESCRIBE_WAIT_S = 1.0
LOOP_STALL_S = 0.05  # woke this late: the event loop itself was stalled


# Observer of a pool's state: ``(kind, name, body)``; ``body`` None means removed.
# Called synchronously on every change, so it must be cheap and must not block.
ChangeObserver = Callable[[str, str, "dict[str, Any] | None"], None]


class _StartError(Exception):
    """An instance could not become ready; the message is caller-safe."""


class FunctionPool:
    def __init__(
        self,
        settings: FunctionSettings,
        runtime: Runtime,
        link_socket: Path,
        nursery: trio.Nursery,
        code: CodeProvider | None = None,
        health: HealthSettings | None = None,
    ) -> None:
        self.settings = settings
        self.name = settings.name
        self.runtime = runtime
        self.link_socket = link_socket
        self._nursery = nursery
        self.code: CodeProvider = code or DirectoryCode()
        self.single_use = settings.instance_mode == "single"
        self.health = health or HealthSettings()
        self.breaker = CircuitBreaker(self.health.breaker)
        self.buffer = RequestBuffer(settings.max_queue or 1000)
        self.instances: dict[str, InstanceRecord] = {}
        # Sum of all ready instances' credits: capacity that will take a request
        # within microseconds. Counting only parked dispatchers would start a new
        # instance in the instant between a RESULT and its dispatcher re-parking.
        self.spare_credits = 0
        self.counters: Counter[str] = Counter()
        self.accepting = True  # False while draining: no new requests
        self.closed = False  # True once stopping: no new instances
        self.last_start_error: str | None = None
        self.on_change: ChangeObserver | None = None  # instance added / changed / removed
        # Set by the node (memory pressure): no new instances; the reason says why.
        self.starts_held: str | None = None

    # --- requests -------------------------------------------------------------

    def submit(self, inv: Invocation) -> None:
        if not self.accepting:
            raise Draining("the node is draining and takes no new requests", retry_after_s=1)
        now = trio.current_time()
        if not self.breaker.admit(now):
            self.counters["rejected_breaker_open"] += 1
            raise Unavailable(
                f"function {self.name!r} is failing repeatedly ({self.breaker.last_reason}); "
                "its circuit breaker is open",
                retry_after_s=self.breaker.retry_after_s(now),
            )
        if self.starts_held and not self.instances:
            self.counters["rejected_starts_held"] += 1
            raise Unavailable(
                f"function {self.name!r} has no running instance and the node starts none "
                f"now ({self.starts_held})",
                retry_after_s=5,
            )
        try:
            self.buffer.put(inv)
        except HuseletError:
            self.counters["rejected_queue_full"] += 1
            raise
        self.counters["accepted"] += 1
        self.ensure_capacity()

    def on_deadline(self, inv: Invocation) -> None:
        """The caller's deadline passed; an instance still working on it is stuck."""
        self.counters["deadline_exceeded"] += 1
        record = inv.instance
        if record is not None and inv.request_id in record.inflight:
            record.inflight.pop(inv.request_id, None)
            self.counters["deadline_kills"] += 1
            record.stop("request deadline passed")

    # --- scaling ----------------------------------------------------------------

    def ensure_capacity(self) -> None:
        if self.closed or self.starts_held:
            return
        starting = sum(
            1
            for r in self.instances.values()
            if r.state is InstanceState.STARTING and r.stop_reason is None
        )
        demand = self.buffer.live_count() - self.spare_credits - starting
        room = self.settings.max_instances - len(self.instances)
        want = max(demand, self.settings.min_instances - len(self.instances))
        for _ in range(min(want, room)):
            self._start_instance()

    def _start_instance(self) -> None:
        record = InstanceRecord(self.name, self._instance_changed)
        record.breaker_round = self.breaker.opened
        self.instances[record.id] = record
        self._instance_changed(record)
        self.counters["instances_started"] += 1
        self._nursery.start_soon(self._lifecycle, record, name=f"instance {record.id}")

    def _instance_changed(self, record: InstanceRecord) -> None:
        if self.on_change is not None:
            body = {"function": self.name, "state": record.state.value}
            self.on_change("instance", record.id, body)

    def claim_link(self, instance_id: str, token: str) -> Any:
        record = self.instances.get(instance_id)
        if record is None or not token_matches(record.token, token):
            return None
        return record.offer_link

    # --- lifecycle --------------------------------------------------------------

    async def _lifecycle(self, record: InstanceRecord) -> None:
        fields = {"function": self.name, "instance": record.id}
        try:
            with record.scope:
                try:
                    await self._start(record)
                except _StartError as exc:
                    self._start_failed(record, str(exc))
                    return
                record.ready_at = trio.current_time()
                self.breaker.record_success(record.ready_at)
                log.info(
                    "instance ready",
                    pid=record.handle.pid if record.handle else None,
                    start_ms=round((record.ready_at - record.created_at) * 1000, 2),
                    **fields,
                )
                await self._serve(record)
        except Exception:
            # A bug here must cost one instance, not the node: log it, tear down,
            # and answer its in-flight requests with a clear error.
            log.exception("instance lifecycle failed", **fields)
            record.stop_reason = record.stop_reason or "internal error"
        finally:
            with trio.CancelScope(shield=True):
                await self._teardown(record)

    async def _start(self, record: InstanceRecord) -> None:
        deadline = trio.current_time() + self.settings.start_timeout_ms / 1000
        with trio.move_on_at(deadline):
            try:
                # A cold function's image may be fetched here, while its request waits.
                record.code = await self.code.acquire(self.settings)
            except HuseletError as exc:
                raise _StartError(f"its code is not available: {exc.message}") from None
        if record.code is None:
            raise _StartError(
                f"its code was not available within {self.settings.start_timeout_ms} ms"
            )
        spec = InstanceSpec(
            instance_id=record.id,
            function=self.settings,
            link_socket=self.link_socket,
            token=record.token,
            image=record.code.image,
        )
        try:
            record.handle = await self.runtime.start(spec)
        except StartFailed as exc:
            raise _StartError(str(exc)) from None
        handle = record.handle
        async with trio.open_nursery() as race:

            async def exited_early() -> None:
                status = await handle.wait()
                record.exit_status = status
                race.cancel_scope.cancel()

            race.start_soon(exited_early)
            with trio.move_on_at(deadline):
                await record.link_arrived.wait()
            # Linked or out of time: either way the race is over (not cancelling
            # it on timeout left the start waiting for the worker to exit).
            race.cancel_scope.cancel()
        if record.link is None:
            if record.exit_status is not None:
                raise _StartError(f"the worker {record.exit_status.describe()} before connecting")
            raise _StartError(
                f"the worker did not connect within {self.settings.start_timeout_ms} ms"
            )
        try:
            with trio.move_on_at(deadline):
                first = await record.link.receive()
                if first is None:
                    raise _StartError("the worker closed its link before it was ready")
                kind = message_type(first)
                if kind == FATAL:
                    err = Fatal.decode(first).error
                    raise _StartError(f"{err.type}: {err.message}")
                if kind != READY:
                    raise _StartError(f"the worker sent {kind!r} before ready")
                return
            raise _StartError(
                f"the handler did not load within {self.settings.start_timeout_ms} ms"
            )
        except (ProtocolError, trio.BrokenResourceError, OSError) as exc:
            raise _StartError(f"the worker broke the link protocol: {exc}") from None

    def _start_failed(self, record: InstanceRecord, reason: str) -> None:
        self.counters["start_failures"] += 1
        self.last_start_error = reason
        record.stop_reason = "start failed"
        log.error("instance start failed", function=self.name, instance=record.id, reason=reason)
        others_alive = any(r is not record for r in self.instances.values())
        if not others_alive:
            # Nothing can serve what is queued: answer it now rather than at its deadline.
            failed = self.buffer.fail_all(
                InstanceStartFailed(f"function {self.name!r} could not start an instance: {reason}")
            )
            self.counters["failed_start"] += failed
        # After the queue heard the specific reason: an opening breaker fails the rest.
        self._breaker_failure(record, f"instance start failed: {reason}")

    def _breaker_failure(self, record: InstanceRecord, reason: str) -> None:
        if record.breaker_round < self.breaker.opened:
            # Started before the breaker last opened (the old, broken code): its
            # failure is old news and must not fail the half-open trial.
            self.counters["stale_failures"] += 1
            return
        if self.breaker.record_failure(trio.current_time(), reason):
            self.counters["breaker_opened"] += 1
            log.error("circuit breaker opened", function=self.name, reason=reason)
            # Starts under way run the code that keeps failing: cancel them, so
            # the half-open trial starts afresh instead of waiting on one of them.
            for other in self.instances.values():
                if other.state is InstanceState.STARTING and other is not record:
                    other.stop("start cancelled")
            # Requests queued behind a crash loop would only wait for their deadline.
            self.buffer.fail_all(
                Unavailable(
                    f"function {self.name!r} is failing repeatedly ({reason}); "
                    "its circuit breaker is open",
                    retry_after_s=self.breaker.retry_after_s(trio.current_time()),
                )
            )

    async def _serve(self, record: InstanceRecord) -> None:
        link = record.link
        assert link is not None
        credit_arrived = trio.Event()

        async def read_frames() -> None:
            nonlocal credit_arrived
            while True:
                msg = await link.receive()
                if msg is None:
                    record.stop("the instance closed its link")
                    return
                record.last_heard = trio.current_time()
                kind = message_type(msg)
                if kind == RESULT:
                    self._complete(record, Result.decode(msg))
                elif kind == PULL:
                    n = Pull.decode(msg).n
                    if self.single_use and record.dispatched:
                        continue  # a single-use instance takes exactly one request
                    record.credits += n
                    self.spare_credits += n
                    credit_arrived.set()
                # Other types are ignored: a newer worker may send more.

        async def watch_exit() -> None:
            # The pidfd makes an exit visible at once, even if a leftover child
            # keeps the socket open and no EOF ever comes.
            assert record.handle is not None
            record.exit_status = await record.handle.wait()
            record.stop("the instance exited")

        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._guard_protocol, record, read_frames)
            nursery.start_soon(watch_exit)
            nursery.start_soon(self._heartbeat, record)
            idle_timeout = self.settings.idle_timeout_ms / 1000
            while True:
                if record.credits == 0:
                    await credit_arrived.wait()
                    credit_arrived = trio.Event()
                    continue
                if not record.inflight:
                    record.state = InstanceState.IDLE
                inv = self.buffer.get_nowait()
                if inv is None:
                    with trio.move_on_after(idle_timeout) as idle:
                        inv = await self.buffer.get()
                    if idle.cancelled_caught:
                        # Count the live ones only: instances idle at once would
                        # each see the others, already stopping, and all go.
                        live = sum(1 for r in self.instances.values() if r.stop_reason is None)
                        if not record.inflight and live > self.settings.min_instances:
                            record.stop_reason = "idle"
                            record.state = InstanceState.STOPPING
                            # Its capacity is gone now, not after the graceful stop.
                            self.spare_credits -= record.credits
                            record.credits = 0
                            self.ensure_capacity()
                            nursery.cancel_scope.cancel()
                            return
                        continue
                if inv is None:
                    continue
                record.credits -= 1
                self.spare_credits -= 1
                record.state = InstanceState.BUSY
                inv.instance = record
                record.inflight[inv.request_id] = inv
                timeout_ms = max(1, int((inv.deadline - trio.current_time()) * 1000))
                # Until the whole frame is written the instance cannot have run it:
                # if the instance ends meanwhile, the request goes back to the queue.
                record.sending = inv
                try:
                    await link.send(
                        Request(inv.request_id, inv.event, inv.kind, timeout_ms).encode()
                    )
                    record.sending = None
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                    # Handled here: inside the nursery it would surface as an ExceptionGroup.
                    if isinstance(exc.__cause__, (BrokenPipeError, ConnectionResetError)):
                        record.stop("the instance closed its link")  # it died: say how
                    else:
                        self.counters["link_errors"] += 1
                        record.stop(f"the link to the instance broke ({exc})")
                    return
                record.dispatched += 1
                if self.single_use:
                    # Its one request is on its way: no more capacity here, and
                    # _complete stops the instance once the result is in.
                    self.spare_credits -= record.credits
                    record.credits = 0
                    await trio.sleep_forever()

    async def _heartbeat(self, record: InstanceRecord) -> None:
        """Ping an instance that has been idle and silent; replace it if it stays silent.

        Only idle instances are judged: a busy one may legitimately be silent
        for its whole handler run, and its request's deadline guards it. A
        stopped (SIGSTOP) or wedged idle worker would otherwise take the next
        request and hold it until that request's deadline.
        """
        link = record.link
        assert link is not None
        interval = self.health.heartbeat_interval_ms / 1000
        timeout = self.health.heartbeat_timeout_ms / 1000
        while True:
            if record.inflight:
                await trio.sleep(interval)
                if record.inflight and stopped_by_signal(record.handle):
                    # SIGSTOPped (or held by a tracer) mid-request: it cannot
                    # finish; answering now beats waiting out the deadline.
                    self.counters["stopped_busy"] += 1
                    log.warning("busy instance is stopped", function=self.name, instance=record.id)
                    record.stop("frozen by SIGSTOP or a tracer")
                    return
                continue
            await trio.sleep_until(record.last_heard + interval)
            if record.inflight or trio.current_time() - record.last_heard < interval:
                continue
            pinged_at = trio.current_time()
            # A worker that stopped reading may have a full socket buffer: the
            # send shares the answer's deadline instead of blocking forever.
            with trio.move_on_at(pinged_at + timeout) as sending:
                try:
                    await link.send(PING_FRAME)
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                    record.stop(f"the link to the instance broke ({exc})")
                    return
            if sending.cancelled_caught:
                # Part of a frame may be on the wire: the link cannot be trusted.
                self.counters["heartbeat_missed"] += 1
                record.stop("missed heartbeat (not reading its link)")
                return
            await trio.sleep_until(pinged_at + timeout)
            if trio.current_time() - (pinged_at + timeout) > LOOP_STALL_S:
                # Our own loop stalled: the answer may sit unread. Judge only
                # on a window the daemon was awake for: ping again.
                continue
            if record.last_heard < pinged_at and not record.inflight:
                self.counters["heartbeat_missed"] += 1
                log.warning(
                    "instance missed its heartbeat",
                    function=self.name,
                    instance=record.id,
                    silent_s=round(trio.current_time() - record.last_heard, 3),
                )
                record.stop("missed heartbeat")
                return
            if record.last_heard < pinged_at:
                # Busy since the ping: its request's deadline now guards it.
                record.last_heard = trio.current_time()

    async def _guard_protocol(self, record: InstanceRecord, read_frames: Any) -> None:
        try:
            await read_frames()
        except trio.BrokenResourceError as exc:
            if isinstance(exc.__cause__, ConnectionResetError):
                # A worker that dies with our frames unread makes Linux reset the
                # link: that is a death (its exit status says how), not a protocol error.
                record.stop("the instance closed its link")
                return
            self._link_broken(record, exc)
        except (ProtocolError, OSError) as exc:
            self._link_broken(record, exc)

    def _link_broken(self, record: InstanceRecord, exc: Exception) -> None:
        self.counters["link_errors"] += 1
        log.warning("instance link broken", function=self.name, instance=record.id, error=str(exc))
        record.stop(f"the instance broke the link protocol ({exc})")

    def _complete(self, record: InstanceRecord, result: Result) -> None:
        inv = record.inflight.pop(result.id, None)
        record.last_active = trio.current_time()
        if inv is None:
            return  # a late result for a request already answered (deadline, drain)
        record.served += 1
        if self.single_use:
            record.stop("served")  # takes effect at the next checkpoint, after this result
        if result.ok:
            content_type = CONTENT_TYPES.get(result.kind, "application/octet-stream")
            if inv.complete(InvokeResult(result.body, content_type)):
                self.counters["ok"] += 1
            if self.breaker.state is not BreakerState.CLOSED:
                self.breaker.record_success(trio.current_time())  # the half-open trial worked
            return
        assert result.error is not None
        error: HuseletError
        if result.error.type == ERROR_INVALID_EVENT:
            error = BadRequest(result.error.message)
        else:
            error = HandlerError(result.error.type, result.error.message)
        if inv.complete(error):
            self.counters[
                "handler_errors" if isinstance(error, HandlerError) else "bad_events"
            ] += 1

    async def _stop_handle(self, record: InstanceRecord, graceful: bool) -> None:
        """Stop the sandbox (gracefully when asked) and record how it exited."""
        handle, link = record.handle, record.link
        if handle is None or record.exit_status is not None:
            return
        if graceful and link is not None:
            with trio.move_on_after(0.5):
                try:
                    await link.send(SHUTDOWN_FRAME)
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                    pass
            record.exit_status = await handle.stop(STOP_GRACE_S)
            return
        if record.stop_reason == "the instance closed its link":
            # A crashed worker: its exit follows the EOF within moments; waiting
            # a little gives the caller "killed by SIGKILL", not a guess.
            with trio.move_on_after(EXIT_DESCRIBE_WAIT_S):
                record.exit_status = await handle.wait()
        if record.exit_status is None:
            handle.kill()
            record.exit_status = await handle.wait()

    async def _teardown(self, record: InstanceRecord) -> None:
        record.state = InstanceState.STOPPING
        self.spare_credits -= record.credits
        record.credits = 0
        handle, link = record.handle, record.link
        graceful = record.stop_reason in PLANNED_STOPS
        # Shielded cleanup still gets a deadline: a runtime that cannot report an
        # exit must not wedge this task (and with it a drain) forever.
        with trio.move_on_after(STOP_GRACE_S + REAP_LIMIT_S) as reaping:
            await self._stop_handle(record, graceful)
        if reaping.cancelled_caught:
            self.counters["unreaped_instances"] += 1
            log.error(
                "instance did not report its exit in time",
                function=self.name,
                instance=record.id,
                pid=handle.pid if handle else None,
            )
        if link is not None:
            await link.aclose()
        if record.code is not None:
            record.code.release()
            record.code = None
        if record.inflight:
            what = f"instance {record.id}"
            if record.exit_status is not None and record.stop_reason in (
                None,
                "the instance closed its link",
                "the instance exited",
            ):
                what += f" {record.exit_status.describe()}"
            elif record.stop_reason:
                what += f" stopped: {record.stop_reason}"
            for inv in record.inflight.values():
                if self._retry(inv, record, delivered=inv is not record.sending):
                    continue
                if inv.complete(InstanceLost(f"{what} while serving the request")):
                    self.counters["instance_lost"] += 1
            record.inflight.clear()
        if self.instances.pop(record.id, None) is not None and self.on_change is not None:
            self.on_change("instance", record.id, None)
        if record.stop_reason not in PLANNED_STOPS:
            self.counters["instances_lost"] += 1
            if record.stop_reason != "request deadline passed":
                exit_text = record.exit_status.describe() if record.exit_status else "ended"
                self._breaker_failure(record, f"an instance {exit_text}")
            log.warning(
                "instance ended",
                function=self.name,
                instance=record.id,
                reason=record.stop_reason or "unknown",
                exit=record.exit_status.describe() if record.exit_status else None,
            )
        else:
            log.info(
                "instance stopped",
                function=self.name,
                instance=record.id,
                reason=record.stop_reason,
            )
        # Replace it if requests are still waiting (unless it could not even start).
        if record.stop_reason != "start failed":
            self.ensure_capacity()

    def _retry(self, inv: Invocation, record: InstanceRecord, *, delivered: bool = True) -> bool:
        """Requeue ``inv`` for a fresh instance if that is safe; True if requeued.

        A request the instance never fully received is always safe to requeue.
        One it did receive is retried only for an idempotent function, once,
        and only while it can still finish in time and the pool still serves; a
        function not declared idempotent is never retried (its handler may have
        had effects before the instance died).
        """
        can_wait = self.accepting and not self.closed and trio.current_time() < inv.deadline
        if not delivered and not inv.done and can_wait:
            self.buffer.requeue(inv)
            self.counters["requeued_undelivered"] += 1
            return True
        if (
            not self.settings.idempotent
            or inv.done
            or inv.attempts > 1
            or not self.accepting
            or self.closed
            or record.stop_reason in NO_RETRY_STOPS
            or trio.current_time() >= inv.deadline
        ):
            return False
        inv.attempts += 1
        self.buffer.requeue(inv)
        self.counters["retried"] += 1
        log.warning(
            "retrying an idempotent request on a fresh instance",
            function=self.name,
            request_id=inv.request_id,
            instance=record.id,
            reason=record.stop_reason,
        )
        return True

    # --- node-level operations -------------------------------------------------

    def reap_idle(self) -> int:
        """Gracefully stop idle instances (keeping ``min_instances``); return how many."""
        keep = self.settings.min_instances
        idle = [
            r
            for r in self.instances.values()
            if r.state is InstanceState.IDLE and not r.inflight and r.stop_reason is None
        ]
        idle.sort(key=lambda r: r.last_active)  # longest idle first
        reaped = 0
        for record in idle[: max(0, len(self.instances) - keep)]:
            record.stop("reaped")
            reaped += 1
        self.counters["instances_reaped"] += reaped
        return reaped

    def instance_pids(self) -> list[int]:
        handles = [r.handle for r in self.instances.values() if r.handle is not None]
        return [h.pid for h in handles if h.pid is not None]

    def busy(self) -> bool:
        return self.buffer.live_count() > 0 or any(r.inflight for r in self.instances.values())

    def stop_all(self, reason: str) -> None:
        self.accepting = False
        self.closed = True
        for record in list(self.instances.values()):
            record.stop(reason)

    def status(self) -> dict[str, Any]:
        by_state = Counter(r.state.value for r in self.instances.values())
        return {
            "name": self.name,
            "runtime": self.runtime.name,
            "max_instances": self.settings.max_instances,
            "instances": {s.value: by_state.get(s.value, 0) for s in InstanceState},
            "queued": self.buffer.live_count(),
            "inflight": sum(len(r.inflight) for r in self.instances.values()),
            "counters": dict(self.counters),
            "last_start_error": self.last_start_error,
            "breaker": self.breaker.describe(trio.current_time()),
        }
