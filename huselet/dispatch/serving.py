"""Serving requests on a ready pool instance, and what happens to them afterwards.

:func:`serve` runs while an instance is up: it reads the worker's frames
(RESULT, PULL credits), sends it queued requests as credit allows — written
by whoever has one to give (the reader on a PULL, or the submitter through the
buffer's taker for an idle instance), not by a task woken for it — and ends
the instance on idle timeout, exit or a broken link. :func:`_complete` maps a
worker's RESULT to the caller's reply (or error), and :func:`retry` is the
policy for requests in flight on an instance that ended. Like
:mod:`huselet.dispatch.lifecycle`, these are functions over the
:class:`~huselet.dispatch.pool.FunctionPool` state, split out to keep the pool
module to admission and scaling.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING

import trio

from huselet.dispatch.counters import PoolCounter
from huselet.dispatch.instance import InstanceRecord, InstanceState
from huselet.dispatch.invocation import Invocation, InvokeResult
from huselet.dispatch.reasons import NO_RETRY_STOPS, StopReason
from huselet.errors import (
    BadRequest,
    DeadlineExceeded,
    HandlerError,
    HandlerStatusError,
    HuseletError,
)
from huselet.health.breaker import BreakerState
from huselet.log import get_logger
from protocol.errors import ProtocolError
from protocol.link import (
    ERROR_DEADLINE,
    ERROR_INVALID_EVENT,
    KIND_JSON,
    KIND_TEXT,
    PULL,
    RESULT,
    Result,
    message_type,
    pull_count,
    request_message,
)

if TYPE_CHECKING:
    from huselet.dispatch.pool import FunctionPool

# The pool's logger: these lines were always the pool's, and dashboards filter on it.
log = get_logger("pool")

CONTENT_TYPES = {
    KIND_JSON: "application/json",
    KIND_TEXT: "text/plain; charset=utf-8",
}


async def serve(pool: FunctionPool, record: InstanceRecord) -> None:
    if pool.single_use:
        await _serve_single_use(pool, record)
        return
    wake = trio.Event()  # set when a frame's rest waits in record.unsent

    def offer() -> None:
        """The instance has credit: take a queued request, or wait as the buffer's taker.

        Runs in the reader (on PULL) or in whoever queues a request (the
        buffer calls it): a request goes out without waking the serving task,
        which is needed only for the rest of a frame that did not fit at once.
        """
        if _dispatch_inline(pool, record):
            if record.unsent is not None:
                wake.set()
            elif record.credits > 0:
                offer()  # the instance pulled for more than one
            return
        if record.credits > 0 and record.sending is None and record.stop_reason is None:
            if not record.inflight:
                record.state = InstanceState.IDLE
            pool.buffer.add_taker(record, offer)

    def pulled(n: int) -> None:
        record.credits += n
        pool.spare_credits += n
        offer()

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_guard_protocol, pool, record, pulled)
            nursery.start_soon(_watch_exit, record)
            pool.heartbeats.watch(record)  # one task per pool judges them all
            idle_timeout = pool.settings.idle_timeout_ms / 1000
            offer()
            while True:
                # One timer per idle period, not per request: it fires idle_timeout
                # after the last result; if the instance served since (or must stay),
                # it is set again from then (or from now).
                now = trio.current_time()
                deadline = _idle_since(record) + idle_timeout
                if deadline <= now:
                    deadline = now + idle_timeout
                with trio.CancelScope(deadline=deadline) as timer:
                    while True:
                        await wake.wait()
                        wake = trio.Event()
                        if record.unsent is not None:
                            # The rest of a frame _dispatch_inline could only partly
                            # write. Never cut short by the timer: a frame's rest
                            # written twice (or half) would corrupt the link.
                            timer.deadline = math.inf
                            if not await _send_frame(pool, record, record.unsent):
                                return
                            record.unsent = None
                            record.sending = None
                            timer.deadline = trio.current_time() + idle_timeout
                            offer()
                if _idled_out(pool, record, idle_timeout):
                    nursery.cancel_scope.cancel()
                    return
    finally:
        pool.buffer.remove_taker(record)


def _idled_out(pool: FunctionPool, record: InstanceRecord, idle_timeout: float) -> bool:
    """Stop ``record`` if it served nothing for ``idle_timeout`` and the pool can spare it."""
    if record.inflight or record.sending is not None:
        return False
    # The same sum as the timer's deadline: when it fires, this holds exactly.
    if trio.current_time() < _idle_since(record) + idle_timeout:
        return False
    # Count the live ones only: instances idle at once would each see the
    # others, already stopping, and all go.
    if pool.live_count() <= pool.settings.min_instances:
        return False
    pool.buffer.remove_taker(record)
    record.stop_reason = StopReason.IDLE
    record.state = InstanceState.STOPPING
    # Its capacity is gone now, not after the graceful stop.
    pool.spare_credits -= record.credits
    record.credits = 0
    pool.ensure_capacity()
    return True


def _idle_since(record: InstanceRecord) -> float:
    """Its last result, or when it became ready if it has served nothing since."""
    if record.ready_at is None:
        return record.last_active
    return max(record.last_active, record.ready_at)


async def _watch_exit(record: InstanceRecord) -> None:
    # The pidfd makes an exit visible at once, even if a leftover child
    # keeps the socket open and no EOF ever comes.
    assert record.handle is not None
    record.exit_status = await record.handle.wait()
    record.stop(StopReason.EXITED)


async def _serve_single_use(pool: FunctionPool, record: InstanceRecord) -> None:
    """An instance for exactly one request: its serving task waits for it and sends it."""
    credit_arrived = trio.Event()

    def pulled(n: int) -> None:
        if not record.dispatched:  # it takes exactly one request
            record.credits += n
            pool.spare_credits += n
            credit_arrived.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(_guard_protocol, pool, record, pulled)
        nursery.start_soon(_watch_exit, record)
        pool.heartbeats.watch(record)
        idle_timeout = pool.settings.idle_timeout_ms / 1000
        await credit_arrived.wait()
        record.state = InstanceState.IDLE
        inv = None
        while inv is None:
            with trio.move_on_after(idle_timeout):
                inv = await pool.buffer.get()
            if inv is None and _idled_out(pool, record, 0.0):
                nursery.cancel_scope.cancel()
                return
        frame = _take(pool, record, inv)
        if not await _send_frame(pool, record, frame):
            return
        record.sending = None
        record.dispatched += 1
        # Its one request is on its way: no more capacity here, and
        # _complete stops the instance once the result is in.
        pool.spare_credits -= record.credits
        record.credits = 0
        await trio.sleep_forever()


def _take(pool: FunctionPool, record: InstanceRecord, inv: Invocation) -> bytes:
    """Give ``inv`` (just taken off the queue) to ``record``: one credit, in flight.

    Returns the request's frame. Until the whole frame is written the instance
    cannot have run it: ``record.sending`` says so, and if the instance ends
    meanwhile the request goes back to the queue (:func:`retry`, undelivered).
    """
    record.credits -= 1
    pool.spare_credits -= 1
    record.state = InstanceState.BUSY
    inv.instance = record
    record.inflight[inv.request_id] = inv
    timeout_ms = max(1, int((inv.deadline - trio.current_time()) * 1000))
    record.sending = inv
    assert record.link is not None
    return record.link.frame(
        request_message(inv.request_id, inv.event, inv.kind, timeout_ms, inv.http, inv.trace)
    )


async def _send_frame(pool: FunctionPool, record: InstanceRecord, frame: bytes) -> bool:
    """Write (the rest of) a request frame; False once the link failed (the instance stops)."""
    assert record.link is not None
    try:
        await record.link.send_frame(frame)
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
        # Handled here: inside the nursery it would surface as an ExceptionGroup.
        _send_failed(pool, record, exc)
        return False
    return True


def _send_failed(pool: FunctionPool, record: InstanceRecord, exc: BaseException) -> None:
    dead = exc if isinstance(exc, OSError) else exc.__cause__
    if isinstance(dead, (BrokenPipeError, ConnectionResetError)):
        record.stop(StopReason.LINK_CLOSED)  # it died: say how
    else:
        pool.counters[PoolCounter.LINK_ERRORS] += 1
        record.stop(StopReason.LINK_BROKE, exc)


def _dispatch_inline(pool: FunctionPool, record: InstanceRecord) -> bool:
    """Hand the next queued request to ``record`` now, written without waiting.

    Called on a PULL (under load a request is always waiting when a result
    comes in) and by the buffer when a request arrives for an instance that
    waits as its taker: no task wakes up in between. The serving task touches
    the link only to write a frame's rest (``record.sending`` is set
    meanwhile, and this refuses). True if a request was taken: written, or its
    frame's rest left in ``record.unsent`` for the serving task to write.
    """
    if (
        record.credits <= 0
        or record.sending is not None
        or record.stop_reason is not None
        or pool.single_use
        or record.link is None
    ):
        return False
    inv = pool.buffer.get_nowait()
    if inv is None:
        return False
    frame = _take(pool, record, inv)
    try:
        written = record.link.send_nowait_raw(frame)
    except OSError as exc:
        # inv stays in flight and marked sending: the teardown requeues it.
        _send_failed(pool, record, exc)
        return True
    record.dispatched += 1
    if written == len(frame):
        record.sending = None
    else:
        # Part of the frame (maybe none of it) is on the wire: the serving task
        # writes the rest, waiting for room; inv stays marked as sending until then.
        record.unsent = frame[written:]
    return True


async def _read_frames(
    pool: FunctionPool, record: InstanceRecord, pulled: Callable[[int], None]
) -> None:
    """Read the worker's frames: results complete their requests, PULLs give credit."""
    link = record.link
    assert link is not None
    decoder = link.decoder
    while True:
        # A frame already buffered (a PULL read with its RESULT) needs no coroutine.
        msg = decoder.next_frame()
        if msg is None:
            msg = await link.receive()
        if msg is None:
            record.stop(StopReason.LINK_CLOSED)
            return
        record.last_heard = now = trio.current_time()
        kind = message_type(msg)
        if kind == RESULT:
            _complete(pool, record, Result.decode(msg), now)
        elif kind == PULL:
            pulled(pull_count(msg))
        # Other types are ignored: a newer worker may send more.


async def _guard_protocol(
    pool: FunctionPool, record: InstanceRecord, pulled: Callable[[int], None]
) -> None:
    try:
        await _read_frames(pool, record, pulled)
    except trio.BrokenResourceError as exc:
        if isinstance(exc.__cause__, ConnectionResetError):
            # A worker that dies with our frames unread makes Linux reset the
            # link: that is a death (its exit status says how), not a protocol error.
            record.stop(StopReason.LINK_CLOSED)
            return
        _link_broken(pool, record, exc)
    except (ProtocolError, OSError) as exc:
        _link_broken(pool, record, exc)


def _link_broken(pool: FunctionPool, record: InstanceRecord, exc: Exception) -> None:
    pool.counters[PoolCounter.LINK_ERRORS] += 1
    log.warning("instance link broken", function=pool.name, instance=record.id, error=str(exc))
    record.stop(StopReason.PROTOCOL_BROKEN, exc)


def _complete(pool: FunctionPool, record: InstanceRecord, result: Result, now: float) -> None:
    inv = record.inflight.pop(result.id, None)
    record.last_active = now
    if inv is None:
        return  # a late result for a request already answered (deadline, drain)
    record.served += 1
    if record.served == 1 and pool.observer is not None:
        pool.observer.first_reply(pool, record, inv)
    if pool.single_use:
        record.stop(StopReason.SERVED)  # takes effect at the next checkpoint, after this result
    if result.ok:
        content_type = CONTENT_TYPES.get(result.kind, "application/octet-stream")
        outcome = InvokeResult(result.body, content_type)
        if result.http is not None:  # an HTTP function chose status and headers
            outcome = InvokeResult(
                result.body, content_type, result.http.status, result.http.headers
            )
        if inv.complete(outcome):
            pool.counters[PoolCounter.OK] += 1
        if pool.breaker.state is not BreakerState.CLOSED:
            pool.breaker.record_success(now)  # the half-open trial worked
        return
    assert result.error is not None
    error: HuseletError
    if result.error.type == ERROR_INVALID_EVENT:
        error = BadRequest(result.error.message)
    elif result.error.type == ERROR_DEADLINE:  # the worker cancelled an async handler
        error = DeadlineExceeded(result.error.message)
    elif result.error.status is not None:  # the handler raised HTTPError
        error = HandlerStatusError(result.error.status, result.error.type, result.error.message)
    else:
        error = HandlerError(result.error.type, result.error.message)
    if inv.complete(error):
        if isinstance(error, DeadlineExceeded):
            pool.counters[PoolCounter.DEADLINE_CANCELLED] += 1
        else:
            pool.counters[
                PoolCounter.HANDLER_ERRORS
                if isinstance(error, HandlerError)
                else PoolCounter.BAD_EVENTS
            ] += 1


def retry(
    pool: FunctionPool, inv: Invocation, record: InstanceRecord, *, delivered: bool = True
) -> bool:
    """Requeue ``inv`` for a fresh instance if that is safe; True if requeued.

    A request the instance never fully received is always safe to requeue.
    One it did receive is retried only for an idempotent function, once,
    and only while it can still finish in time and the pool still serves; a
    function not declared idempotent is never retried (its handler may have
    had effects before the instance died).
    """
    can_wait = pool.accepting and not pool.closed and trio.current_time() < inv.deadline
    if not delivered and not inv.done and can_wait:
        pool.buffer.requeue(inv)
        pool.counters[PoolCounter.REQUEUED_UNDELIVERED] += 1
        return True
    if (
        not pool.settings.idempotent
        or inv.done
        or inv.attempts > 1
        or not pool.accepting
        or pool.closed
        or record.stop_reason in NO_RETRY_STOPS
        or trio.current_time() >= inv.deadline
    ):
        return False
    inv.attempts += 1
    pool.buffer.requeue(inv)
    pool.counters[PoolCounter.RETRIED] += 1
    log.warning(
        "retrying an idempotent request on a fresh instance",
        function=pool.name,
        request_id=inv.request_id,
        instance=record.id,
        reason=record.stop_text,
    )
    return True


# --- node-level operations -------------------------------------------------
