"""A start refused at the host's limit: a typed 503, a short hold, no breaker.

When the runtime refuses a start because the host has no room
(:class:`~huselet.runtime.hostlimits.StartRefused`: processes, memory or
descriptors), the function is not failing — the node is full. So:

- the failure is counted (``start_refused_host_limit``) and logged with the
  limit's name, and never counted against the function's circuit breaker;
- requests queued for the function stay queued when another of its
  instances is alive (it serves them as it frees up); with none alive they
  are answered at once with :class:`~huselet.errors.HostLimitReached`
  (503, code ``host_limit``, the limit named in the message);
- new starts of the function are held for :data:`HOLD_S` (a full host would
  otherwise be asked for a clone on every request), and the pool tries
  again after it; a request arriving meanwhile with no instance alive gets
  the same 503 at once.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import trio

from huselet.dispatch.counters import PoolCounter
from huselet.dispatch.reasons import StopReason
from huselet.errors import HostLimitReached
from huselet.log import get_logger
from huselet.runtime.hostlimits import StartRefused

if TYPE_CHECKING:
    from huselet.dispatch.instance import InstanceRecord
    from huselet.dispatch.pool import FunctionPool

log = get_logger("pool")

HOLD_S = 1.0
RETRY_AFTER_S = 1


class HostLimitHold:
    """One pool's hold on new starts after a refusal at a host limit."""

    def __init__(self) -> None:
        self.until = -1.0
        self.reason = ""
        self._retry_scheduled = False

    def holding(self, now: float) -> bool:
        return now < self.until

    def error(self, function: str) -> HostLimitReached:
        return HostLimitReached(
            f"function {function!r} cannot start an instance: {self.reason}",
            retry_after_s=RETRY_AFTER_S,
        )


def start_refused(pool: FunctionPool, record: InstanceRecord, exc: StartRefused) -> None:
    """The runtime refused ``record``'s start at a host limit (see the module docstring)."""
    hold = pool.host_limit
    now = trio.current_time()
    hold.until, hold.reason = now + HOLD_S, str(exc)
    pool.counters[PoolCounter.START_REFUSED_HOST_LIMIT] += 1
    pool.last_start_error = str(exc)
    record.stop_reason = StopReason.START_FAILED
    log.warning(
        "instance start refused at a host limit",
        function=pool.name,
        instance=record.id,
        limit=exc.limit.value,
        reason=str(exc),
    )
    if not any(r is not record and r.stop_reason is None for r in pool.instances.values()):
        pool.counters[PoolCounter.FAILED_HOST_LIMIT] += pool.buffer.fail_all(hold.error(pool.name))
    if not hold._retry_scheduled:
        hold._retry_scheduled = True
        pool._nursery.start_soon(_retry_after_hold, pool)


async def _retry_after_hold(pool: FunctionPool) -> None:
    hold = pool.host_limit
    try:
        # Starts already under way when the hold began may still be refused
        # and move ``until`` on: wait out the last of them.
        while True:
            await trio.sleep_until(hold.until)
            if not hold.holding(trio.current_time()):
                break
    finally:
        hold._retry_scheduled = False
    pool.ensure_capacity()  # min_instances, or what queued meanwhile
