"""The records one request leaves behind, and its metrics.

The dispatcher calls :class:`RequestStory` at admission, at a deadline kill
and when the request is answered. Per request that costs two ring appends of
fixed-slot records (:mod:`huselet.observe.records`: no dict unless read) and a
few histogram increments; the access record (one per request, at info) goes
to the log only within ``log.access_rate`` records per second — the ones
above that are counted and the next logged record says how many were
skipped — while the function's log ring (``huselet ctl logs``) keeps them all.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import trio

from huselet.dispatch.reasons import StopReason
from huselet.errors import HuseletError
from huselet.log import get_logger
from huselet.observe.records import AccessRecord, AdmittedRecord

if TYPE_CHECKING:
    from huselet.dispatch.invocation import Invocation
    from huselet.dispatch.pool import FunctionPool
    from huselet.metrics.requests import RequestMetrics
    from huselet.observe.context import RequestMeta
    from huselet.observe.ring import LogRing

log = get_logger("access")
story_log = get_logger("dispatcher")


class RateSampler:
    """A token bucket: ``allow()`` at most ``rate`` times a second (bursts up to ``rate``)."""

    __slots__ = ("_at", "_tokens", "rate", "skipped")

    def __init__(self, rate: int) -> None:
        self.rate = rate
        self._tokens = float(rate)
        self._at = 0.0
        self.skipped = 0

    def allow(self, now: float) -> bool:
        if self.rate <= 0:
            return False
        self._tokens = min(float(self.rate), self._tokens + (now - self._at) * self.rate)
        self._at = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        self.skipped += 1
        return False


class RequestStory:
    def __init__(
        self,
        *,
        metrics: RequestMetrics | None,
        ring: LogRing | None,
        access_rate: int,
    ) -> None:
        self.metrics = metrics
        self.ring = ring
        self.sampler = RateSampler(access_rate)

    def admitted(self, pool: FunctionPool, inv: Invocation, meta: RequestMeta | None) -> None:
        trace_id = meta.trace_id if meta is not None else None
        if self.ring is not None:
            record = AdmittedRecord(pool.name, inv.request_id, len(pool.buffer), trace_id)
            self.ring.append("info", "dispatcher", "request admitted", record)
        if story_log.is_debug():
            story_log.debug(
                "request admitted",
                **AdmittedRecord(pool.name, inv.request_id, len(pool.buffer), trace_id).fields(),
            )

    def cold_start(self, pool: FunctionPool, inv: Invocation) -> None:
        """``inv`` made the pool start an instance (rare: logged at info)."""
        story_log.info(
            "instance starting for request",
            function=pool.name,
            request_id=inv.request_id,
            runtime=pool.runtime.name,
        )

    def deadline(self, pool: FunctionPool, inv: Invocation) -> None:
        record = inv.instance
        story_log.warning(
            "request deadline passed",
            function=pool.name,
            request_id=inv.request_id,
            instance=record.id if record is not None else None,
            killed=record is not None and record.stop_reason is StopReason.DEADLINE,
        )

    def refused(
        self, pool: FunctionPool, inv: Invocation, exc: HuseletError, meta: RequestMeta | None
    ) -> None:
        """Refused at admission (queue full, breaker open, draining): no timings."""
        if self.metrics is not None:
            m = self.metrics.of(pool.name)
            m.statuses[exc.status] += 1
            m.rejections[(exc.status, exc.code)] += 1
        self._write(self._record(pool.name, inv, exc.status, exc.code, meta), trio.current_time())

    def finished(
        self,
        pool: FunctionPool,
        inv: Invocation,
        meta: RequestMeta | None,
        now: float | None = None,
    ) -> None:
        """``inv`` was answered; ``now``: the caller's clock reading, if it took one."""
        if now is None:
            now = trio.current_time()
        outcome = inv.outcome
        if isinstance(outcome, HuseletError):
            status, code = outcome.status, outcome.code
        else:
            status, code = 200, None
        enqueued = inv.enqueued_at
        dispatched = inv.dispatched_at
        instance = inv.instance
        start_s = 0.0
        cold = False
        if instance is not None and instance.ready_at is not None and instance.ready_at > enqueued:
            # It became ready after this request arrived: the request waited for its start.
            cold = True
            start_s = instance.ready_at - max(enqueued, instance.created_at)
        if dispatched is None:
            queue_s, exec_s = now - enqueued, 0.0
        else:
            queue_s, exec_s = max(0.0, dispatched - enqueued - start_s), now - dispatched
        total_s = now - enqueued
        if meta is not None:
            meta.queue_s, meta.start_s, meta.exec_s, meta.cold = queue_s, start_s, exec_s, cold
        metrics = self.metrics
        if metrics is not None:
            m = metrics.of(pool.name)
            m.statuses[status] += 1
            if code is not None:
                m.rejections[(status, code)] += 1
            m.queue.observe(queue_s)
            m.start.observe(start_s)
            if dispatched is not None:
                m.exec.observe(exec_s)
            m.total.observe(total_s)
            if cold:
                m.cold += 1
        record = self._record(pool.name, inv, status, code, meta)
        record.total_s = total_s
        record.queue_s = queue_s
        record.start_s = start_s
        record.exec_s = exec_s
        record.cold = cold
        self._write(record, now)

    @staticmethod
    def _record(
        function: str, inv: Invocation, status: int, code: str | None, meta: RequestMeta | None
    ) -> AccessRecord:
        instance = inv.instance
        return AccessRecord(
            function,
            inv.request_id,
            status,
            code,
            instance.id if instance is not None else None,
            inv.attempts,
            meta.trace_id if meta is not None else None,
        )

    def _write(self, record: AccessRecord, now: float) -> None:
        """To the log within the sampler's rate, else to the ring only; as it is, either way."""
        sampler = self.sampler
        if sampler.allow(now) and log.is_info():
            if sampler.skipped:
                record.sampled_out = sampler.skipped
                sampler.skipped = 0
            # The log ring is one of the handlers: it keeps the record as it is.
            log.info_direct("request", record)
        elif self.ring is not None:
            self.ring.append("info", "access", "request", record)
