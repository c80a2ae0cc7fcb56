"""Retrying an instance start that ran out of time, while queued requests can wait.

A start that fails by running out of ``start_timeout_ms`` (the image fetch,
the worker's connect or its handler's import took too long) is often the
node's doing, not the function's: a loop stalled by load stretches every
step of a start. Answering every queued request with 502 then throws away
requests whose deadlines had plenty of time left. So, for such a
*transient* failure (:func:`retry_start`):

- queued requests whose deadline cannot outlast the backoff (plus
  :data:`MIN_TRY_S`) get the 502 now; the others stay queued;
- after a backoff (:data:`BASE_BACKOFF_S` doubled per consecutive failure,
  at most :data:`MAX_BACKOFF_S`) the pool starts instances for what is
  still queued; a request whose deadline passes meanwhile gets its 504;
- every failed start still counts against the circuit breaker, so a
  function that keeps failing opens it exactly as before;
- retries stop after :data:`MAX_RETRIES` consecutive failures (the
  breaker's failures since the function last had an instance ready), when
  the breaker is not closed, when nothing is queued, or when the pool is
  stopping: then the queue gets its 502 at once, as for any failed start.

Failures the function causes itself — the worker exited or raised while
importing its handler, it broke the link protocol, its code could not be
fetched, the sandbox could not be made — are never retried: they would fail
again, and the caller should hear so at once. Retries are counted
(``start_retries``) and logged.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import trio

from huselet.dispatch.counters import PoolCounter
from huselet.errors import InstanceStartFailed
from huselet.health.breaker import BreakerState
from huselet.log import get_logger

if TYPE_CHECKING:
    from huselet.dispatch.instance import InstanceRecord
    from huselet.dispatch.pool import FunctionPool

log = get_logger("pool")

MAX_RETRIES = 2  # consecutive failed starts retried; the next failure answers the queue
BASE_BACKOFF_S = 0.2
MAX_BACKOFF_S = 2.0
# A queued request stays for the retry only if its deadline leaves at least
# this much after the backoff: less could not even see a worker connect.
MIN_TRY_S = 0.05


class StartRetry:
    """One pool's pending retry of a timed-out start (at most one at a time).

    The retry starts once its backoff is over *and* the failed instance is torn
    down: until then the failed one still holds its slot of ``max_instances``
    (its sandbox is being stopped), and a start made then could find no room.
    """

    __slots__ = ("_due", "scheduled")

    def __init__(self) -> None:
        self.scheduled = False  # a retry is pending
        self._due = False  # its backoff is over; waiting for the teardown

    def fire_if_due(self, pool: FunctionPool) -> None:
        """A failed start was torn down (lifecycle): start the retry if it is due."""
        if self._due:
            self._fire(pool)

    def _fire(self, pool: FunctionPool) -> None:
        self.scheduled = self._due = False
        pool.ensure_capacity()  # starts what is still queued (nothing once the pool closed)


def backoff_s(failures: int) -> float:
    """The wait before the retry after ``failures`` consecutive failed starts (>= 1)."""
    return min(BASE_BACKOFF_S * 2.0 ** max(0, failures - 1), MAX_BACKOFF_S)


def start_error(pool: FunctionPool, reason: str) -> InstanceStartFailed:
    """The 502 a queued request gets when no instance of ``pool`` could start."""
    return InstanceStartFailed(f"function {pool.name!r} could not start an instance: {reason}")


def retry_start(pool: FunctionPool, record: InstanceRecord, reason: str) -> bool:
    """``record``'s start timed out: retry it if the queue can wait (module docstring).

    True when the failure was handled here (the breaker told, the queue kept
    or answered); False when the caller answers it as any failed start."""
    retry = pool.start_retry
    if pool.closed or pool.breaker.state is not BreakerState.CLOSED:
        return False
    if retry.scheduled:
        # A sibling start failed first and its retry is pending: it serves
        # this start's share of the queue too.
        pool.breaker_failure(record, f"instance start failed: {reason}")
        return True
    now = trio.current_time()
    failures = pool.breaker.recent_failures(now) + 1  # counting this one
    if failures > MAX_RETRIES or pool.buffer.live_count() == 0:
        return False
    delay = backoff_s(failures)
    short = pool.buffer.fail_expiring(now + delay + MIN_TRY_S, start_error(pool, reason))
    pool.counters[PoolCounter.FAILED_START] += short
    if pool.buffer.live_count() == 0:
        return False  # nobody left to wait for a retry
    pool.breaker_failure(record, f"instance start failed: {reason}")
    if pool.breaker.state is not BreakerState.CLOSED:
        return True  # it opened and answered the queue: no retry into an open breaker
    retry.scheduled = True
    pool.counters[PoolCounter.START_RETRIES] += 1
    log.warning(
        "instance start timed out; retrying",
        function=pool.name,
        instance=record.id,
        failures=failures,
        backoff_ms=round(delay * 1000),
        queued=pool.buffer.live_count(),
    )
    pool._nursery.start_soon(_retry_after, pool, record, delay, name=f"start retry {pool.name}")
    return True


async def _retry_after(pool: FunctionPool, record: InstanceRecord, delay: float) -> None:
    retry = pool.start_retry
    await trio.sleep(delay)
    retry._due = True
    if record.id not in pool.instances:
        retry._fire(pool)  # already torn down; else its teardown fires the retry
