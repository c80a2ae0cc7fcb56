"""What becomes of a request an instance had: its RESULT as the caller's reply, or,
when the instance ended first, whether it may run again.

:func:`complete` maps a worker's RESULT to the caller's reply (or typed
error) and keeps the instance's answered count; :func:`possibly_started` and
:func:`retry` are the policy for requests in flight on an instance that
ended: of those it received, only the oldest unanswered can have started
(the worker runs them in order and writes each RESULT before the next); the
others are requeued as never delivered, and a started one is retried only
for an idempotent function. Functions over the
:class:`~huselet.dispatch.pool.FunctionPool` state, like
:mod:`huselet.dispatch.serving`, which calls them.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import trio

from huselet.dispatch.counters import PoolCounter
from huselet.dispatch.instance import InstanceRecord
from huselet.dispatch.invocation import Invocation, InvocationState, InvokeResult
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
from protocol.link import (
    ERROR_DEADLINE,
    ERROR_INVALID_EVENT,
    KIND_JSON,
    KIND_TEXT,
    ResultFields,
)

if TYPE_CHECKING:
    from huselet.dispatch.pool import FunctionPool

# The pool's logger: these lines were always the pool's, and dashboards filter on it.
log = get_logger("pool")

# How long a worker may take to skip a request that expired while it waited
# behind others there (it answers at once) before it is taken to be stuck on it.
OVERDUE_GRACE_S = 0.5

CONTENT_TYPES = {
    KIND_JSON: "application/json",
    KIND_TEXT: "text/plain; charset=utf-8",
}


def possibly_started(record: InstanceRecord, inv: Invocation) -> bool:
    """May the instance have started ``inv`` (sent to it and not answered)?

    Only the oldest request it has not answered: the worker runs its requests
    in order and writes each RESULT before it starts the next (and what it
    wrote stays readable after it dies). The one whose frame is still being
    written cannot have been read whole.
    """
    return inv is not record.sending and inv.link_seq <= record.answered


def complete(pool: FunctionPool, record: InstanceRecord, result: ResultFields, now: float) -> None:
    rid, ok, body, kind, error_info, http = result
    inv = record.inflight.pop(rid, None)
    record.last_active = now
    if inv is None:
        return  # a late result for a request already answered (deadline, drain)
    if inv.link_seq >= record.answered:
        record.answered = inv.link_seq + 1
        # The next one may have expired while it waited here (its caller has a
        # 504): the worker skips it at once, or it is stuck on it after all.
        head = next(iter(record.inflight.values()), None) if record.inflight else None
        if head is not None and head.state is InvocationState.DONE:  # head.done, inline
            record.overdue_at = now + OVERDUE_GRACE_S
        elif record.overdue_at != math.inf:
            record.overdue_at = math.inf
    record.served += 1
    if record.served == 1 and pool.observer is not None:
        pool.observer.first_reply(pool, record, inv)
    if pool.single_use:
        record.stop(StopReason.SERVED)  # takes effect at the next checkpoint, after this result
    if ok:
        content_type = CONTENT_TYPES.get(kind, "application/octet-stream")
        if http is None:
            outcome = InvokeResult(body, content_type)
        else:  # an HTTP function chose status and headers
            outcome = InvokeResult(body, content_type, http.status, http.headers)
        if inv.complete(outcome):
            pool.counters[PoolCounter.OK] += 1
        if pool.breaker.state is not BreakerState.CLOSED:
            pool.breaker.record_success(now)  # the half-open trial worked
        return
    assert error_info is not None
    error: HuseletError
    if error_info.type == ERROR_INVALID_EVENT:
        error = BadRequest(error_info.message)
    elif error_info.type == ERROR_DEADLINE:  # the worker cancelled (or skipped) the request
        error = DeadlineExceeded(error_info.message)
    elif error_info.status is not None:  # the handler raised HTTPError
        error = HandlerStatusError(error_info.status, error_info.type, error_info.message)
    else:
        error = HandlerError(error_info.type, error_info.message)
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
