"""Start and teardown of one pool instance: everything from "record created" to "gone".

:func:`run_instance` is the task a :class:`~huselet.dispatch.pool.FunctionPool`
starts per instance: it fetches the code, starts the sandbox, waits for the
worker's link and READY, hands the instance to :func:`~huselet.dispatch.serving.serve`,
and always tears it down — stopping the sandbox, releasing the code and
answering (or retrying) whatever was in flight. These are functions over the
pool rather than pool methods so the pool module keeps to admission, scaling
and its public API; they read and update the pool's state directly.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import trio

from huselet.dispatch.counters import PoolCounter
from huselet.dispatch.hostlimit import start_refused
from huselet.dispatch.instance import InstanceRecord, InstanceState
from huselet.dispatch.outcomes import possibly_started, retry
from huselet.dispatch.reasons import PLANNED_STOPS, StartFailure, StopReason
from huselet.dispatch.serving import count_credits, serve
from huselet.dispatch.startretry import retry_start, start_error
from huselet.errors import HuseletError, InstanceLost
from huselet.log import get_logger
from huselet.runtime.base import ExitStatus, InstanceHandle, InstanceSpec, StartFailed
from huselet.runtime.hostlimits import StartRefused
from huselet.runtime.locallinks import LinkHere
from protocol.errors import ProtocolError
from protocol.link import FATAL, READY, SHUTDOWN_FRAME, Fatal, message_type

if TYPE_CHECKING:
    from huselet.dispatch.pool import FunctionPool

# The pool's logger: these lines were always the pool's, and dashboards filter on it.
log = get_logger("pool")

STOP_GRACE_S = 2.0
REAP_LIMIT_S = 5.0  # after a kill, how long a runtime may take to report the exit
EXIT_DESCRIBE_WAIT_S = 1.0
FETCH, SANDBOX, TIMEOUT = StartFailure.FETCH, StartFailure.SANDBOX, StartFailure.TIMEOUT
IMPORT, OOM, CRASH = StartFailure.IMPORT, StartFailure.OOM, StartFailure.CRASH


class _StartError(Exception):
    """An instance could not become ready: why (typed where it failed), and a safe message."""

    def __init__(self, kind: StartFailure, message: str) -> None:
        super().__init__(message)
        self.kind = kind


async def run_instance(pool: FunctionPool, record: InstanceRecord) -> None:
    fields = {"function": pool.name, "instance": record.id}
    try:
        with record.scope:
            try:
                await _start(pool, record)
            except _StartError as exc:
                _start_failed(pool, record, str(exc), exc.kind)
                return
            except StartRefused as exc:  # the node is full, the function is fine
                start_refused(pool, record, exc)
                return
            record.ready_at = trio.current_time()
            if record.exit_status is not None:  # it exited between its link and READY
                record.stop(StopReason.EXITED)
            pool.breaker.record_success(record.ready_at)
            if pool.observer is not None:
                pool.observer.instance_ready(pool, record)
            pool.ready_log.ready(
                pool.name,
                pool.starting - 1,  # this record still counts as starting
                record.ready_at,
                round((record.ready_at - record.created_at) * 1000, 2),
                instance=record.id,
                pid=record.handle.pid if record.handle else None,
            )
            await serve(pool, record)
    except Exception:
        # A bug here must cost one instance, not the node: log it, tear down,
        # and answer its in-flight requests with a clear error.
        log.exception("instance lifecycle failed", **fields)
        record.stop_reason = record.stop_reason or StopReason.INTERNAL_ERROR
    finally:
        with trio.CancelScope(shield=True):
            await _teardown(pool, record)


async def _start(pool: FunctionPool, record: InstanceRecord) -> None:
    timeout_ms = pool.settings.start_timeout_ms
    deadline = trio.current_time() + timeout_ms / 1000
    with trio.move_on_at(deadline):
        try:
            # A cold function's image may be fetched here, while its request waits.
            record.code = await pool.code.acquire(pool.settings)
        except HuseletError as exc:
            raise _StartError(FETCH, f"its code is not available: {exc.message}") from None
    if record.code is None:
        raise _StartError(TIMEOUT, f"its code was not available within {timeout_ms} ms")
    pool.code_counted(record.code.digest, +1)
    record.marks["code"] = trio.current_time()
    spec = InstanceSpec(
        instance_id=record.id,
        function=pool.settings,
        link_socket=pool.link_socket,
        token=record.token,
        image=record.code.image,
    )
    # A link the runtime dials to our own socket: its handshake runs in this task.
    here = LinkHere()
    try:
        with here.claiming():
            record.handle = await pool.runtime.start(spec)
    except BaseException as exc:
        here.abort()
        if isinstance(exc, StartFailed) and not isinstance(exc, StartRefused):
            raise _StartError(SANDBOX, str(exc)) from None
        raise
    record.marks["sandbox"] = trio.current_time()
    handle = record.handle
    try:
        if handle.pid is not None:
            pool.live_pids.add(handle.pid, record)  # the memory loop follows it from here
        # The race of link and exit: an exit before the link cancels the wait.
        race = trio.CancelScope(deadline=deadline)
        _watch_exit(pool, record, handle, race)
        with race:
            if here.pending:
                await here.run()  # HELLO, token, WELCOME: offers the link to the record
            if record.link is None:
                await record.link_arrived.wait()
    finally:
        here.abort()  # not run (a bug above): the server's end is closed, never leaked
    if record.link is None:
        if record.exit_status is not None:
            status = record.exit_status
            kind = OOM if status.oom_killed else CRASH
            raise _StartError(kind, f"the worker {status.describe()} before connecting")
        raise _StartError(TIMEOUT, f"the worker did not connect within {timeout_ms} ms")
    record.marks["connect"] = trio.current_time()
    try:
        with trio.move_on_at(deadline):
            first = await record.link.receive()
            if first is None:
                await _exit_told(record, deadline)
                if record.exit_status is not None and record.exit_status.oom_killed:
                    raise _StartError(OOM, "the worker ran out of memory before it was ready")
                raise _StartError(IMPORT, "the worker closed its link before it was ready")
            sent = message_type(first)
            if sent == FATAL:
                err = Fatal.decode(first).error
                raise _StartError(IMPORT, f"{err.type}: {err.message}")
            if sent != READY:
                raise _StartError(CRASH, f"the worker sent {sent!r} before ready")
            return
        raise _StartError(TIMEOUT, f"the handler did not load within {timeout_ms} ms")
    except (ProtocolError, trio.BrokenResourceError, OSError) as exc:
        raise _StartError(CRASH, f"the worker broke the link protocol: {exc}") from None


def _watch_exit(
    pool: FunctionPool, record: InstanceRecord, handle: InstanceHandle, race: trio.CancelScope
) -> None:
    """Record the instance's exit the moment it happens, and act on it.

    Before its link arrived the exit ends ``race`` (the start fails with the
    exit status); once it is serving, the exit stops it. A callback on the
    handle, not a task per instance; a handle that cannot call back gets
    one task that waits for it.
    """

    def exited(status: ExitStatus) -> None:
        if record.exit_status is None:
            record.exit_status = status
        if record.link is None:
            race.cancel()
        elif record.ready_at is not None and record.state is not InstanceState.STOPPING:
            # The pidfd makes an exit visible at once, even if a leftover child
            # keeps the socket open and no EOF ever comes.
            record.stop(StopReason.EXITED)

    if not handle.on_exit(exited):
        pool.spawn(_call_on_exit, handle, exited)


async def _call_on_exit(handle: InstanceHandle, exited: Callable[[ExitStatus], None]) -> None:
    exited(await handle.wait())


async def _exit_told(record: InstanceRecord, deadline: float) -> None:
    """The link closed before READY: its exit status (OOM?) follows within moments."""
    if record.exit_status is None and record.handle is not None:
        with trio.move_on_at(min(deadline, trio.current_time() + EXIT_DESCRIBE_WAIT_S)):
            record.exit_status = await record.handle.wait()


def _start_failed(
    pool: FunctionPool, record: InstanceRecord, reason: str, kind: StartFailure
) -> None:
    pool.counters[PoolCounter.START_FAILURES] += 1
    pool.last_start_error = reason
    record.stop_reason = StopReason.START_FAILED
    log.error("instance start failed", function=pool.name, instance=record.id, reason=reason)
    if pool.observer is not None:
        pool.observer.start_failed(pool, record, reason, kind)
    if kind is TIMEOUT and retry_start(pool, record, reason):
        return  # the queue waits for a retry (or heard why not)
    others_alive = any(r is not record for r in pool.instances.values())
    if not others_alive:
        # Nothing can serve what is queued: answer it now rather than at its deadline.
        failed = pool.buffer.fail_all(start_error(pool, reason))
        pool.counters[PoolCounter.FAILED_START] += failed
    # After the queue heard the specific reason: an opening breaker fails the rest.
    pool.breaker_failure(record, f"instance start failed: {reason}")


async def _stop_handle(pool: FunctionPool, record: InstanceRecord, graceful: bool) -> None:
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
    if record.stop_reason == StopReason.LINK_CLOSED:
        # A crashed worker: its exit follows the EOF within moments; waiting
        # a little gives the caller "killed by SIGKILL", not a guess.
        with trio.move_on_after(EXIT_DESCRIBE_WAIT_S):
            record.exit_status = await handle.wait()
    if record.exit_status is None:
        handle.kill()
        record.exit_status = await handle.wait()


async def _teardown(pool: FunctionPool, record: InstanceRecord) -> None:
    record.state = InstanceState.STOPPING
    record.credits = 0
    count_credits(pool, record)
    handle, link = record.handle, record.link
    graceful = record.stop_reason in PLANNED_STOPS
    # Shielded cleanup still gets a deadline: a runtime that cannot report an
    # exit must not wedge this task (and with it a drain) forever.
    with trio.move_on_after(STOP_GRACE_S + REAP_LIMIT_S) as reaping:
        await _stop_handle(pool, record, graceful)
    if reaping.cancelled_caught:
        pool.counters[PoolCounter.UNREAPED_INSTANCES] += 1
        log.error(
            "instance did not report its exit in time",
            function=pool.name,
            instance=record.id,
            pid=handle.pid if handle else None,
        )
    if handle is not None and handle.pid is not None:
        pool.live_pids.discard(handle.pid, record)
    if link is not None:
        await link.aclose()
    if record.code is not None:
        pool.code_counted(record.code.digest, -1)
        record.code.release()
        record.code = None
    if record.inflight:
        what = f"instance {record.id}"
        if record.exit_status is not None and record.stop_reason in (
            None,
            StopReason.LINK_CLOSED,
            StopReason.EXITED,
        ):
            what += f" {record.exit_status.describe()}"
        elif record.stop_reason:
            what += f" stopped: {record.stop_text}"
        # Newest first: each requeue goes to the head, so they keep their order.
        for inv in reversed(record.inflight.values()):
            if retry(pool, inv, record, delivered=possibly_started(record, inv)):
                continue
            if inv.complete(InstanceLost(f"{what} while serving the request")):
                pool.counters[PoolCounter.INSTANCE_LOST] += 1
        record.inflight.clear()
    if pool.unlist(record) and pool.on_change is not None:
        pool.on_change("instance", record.id, None)
    if pool.observer is not None:
        pool.observer.instance_ended(pool, record)
    if record.stop_reason not in PLANNED_STOPS:
        pool.counters[PoolCounter.INSTANCES_LOST] += 1
        if record.stop_reason != StopReason.DEADLINE:
            exit_text = record.exit_status.describe() if record.exit_status else "ended"
            pool.breaker_failure(record, f"an instance {exit_text}")
        log.warning(
            "instance ended",
            function=pool.name,
            instance=record.id,
            reason=record.stop_text or "unknown",
            exit=record.exit_status.describe() if record.exit_status else None,
        )
    else:
        log.info(
            "instance stopped",
            function=pool.name,
            instance=record.id,
            reason=record.stop_text,
        )
    # Replace it if requests are still waiting (unless it could not even start:
    # then only a due retry of a timed-out start does, see startretry).
    if record.stop_reason != StopReason.START_FAILED:
        pool.ensure_capacity()
    else:
        pool.start_retry.fire_if_due(pool)
