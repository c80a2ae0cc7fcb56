"""FunctionPool: one function's request buffer and the lifecycle of its instances.

Scaling rule: when queued requests outnumber the instances that are idle or
already starting, start more — while the request waits, within
``max_instances``. An idle instance is reaped after ``idle_timeout_ms``
(keeping ``min_instances``).

Lifecycle of one instance (:func:`huselet.dispatch.lifecycle.run_instance`)::

    STARTING ─ runtime.start() ─ link HELLO+token ─ READY ─▶ IDLE ⇄ BUSY
        │ (exit, FATAL, start timeout)                        │ (idle timeout,
        ▼                                                     ▼  link closed, deadline
     start failed                                          STOPPING  overrun, node stop)

An instance also ends when, idle, it misses its heartbeat (PING unanswered),
or when found frozen (SIGSTOP) while busy (:mod:`huselet.dispatch.heartbeat`,
one task per pool). Every in-flight invocation of an
instance that ends is completed with a clear :class:`InstanceLost` error —
never left waiting — unless it can safely run elsewhere: its request never
fully reached the instance, or the function is ``idempotent`` (once).
The per-instance record lives in :mod:`huselet.dispatch.instance`; starting and
tearing an instance down in :mod:`huselet.dispatch.lifecycle`, and serving
requests on it (result mapping, retry policy) in :mod:`huselet.dispatch.serving`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio

from huselet.activity import ActivityCount
from huselet.config import FunctionSettings
from huselet.config.health import HealthSettings
from huselet.dispatch.buffer import RequestBuffer
from huselet.dispatch.counters import PoolCounter
from huselet.dispatch.heartbeat import Heartbeats
from huselet.dispatch.hostlimit import HostLimitHold
from huselet.dispatch.instance import (
    CodeProvider,
    DirectoryCode,
    InstanceRecord,
    InstanceState,
)
from huselet.dispatch.invocation import Invocation
from huselet.dispatch.lifecycle import run_instance
from huselet.dispatch.links import token_matches
from huselet.dispatch.livepids import LivePids
from huselet.dispatch.observer import InstanceObserver
from huselet.dispatch.reasons import StopReason
from huselet.dispatch.serving import expire_inflight
from huselet.dispatch.startgc import START_GC
from huselet.dispatch.startlog import ReadyLog
from huselet.dispatch.startretry import StartRetry
from huselet.errors import Draining, HuseletError, Unavailable
from huselet.health.breaker import BreakerState, CircuitBreaker
from huselet.log import get_logger
from huselet.runtime.base import Runtime

log = get_logger("pool")

# Starts under way per function at most. A runtime starts one function's
# instances one after the other (the zygote clones one at a time), so asking
# for 4,000 at once only queued them: each start's timeout ran while it
# waited its turn (the last ones timed out, and the breaker opened), and
# thousands of waiting tasks cost the event loop. The starts held back are
# asked for in batches: once RESUME_BATCH of the starts under way are ready
# or ended (one task per batch, not one per start: bench_startsteps).
MAX_STARTING = 32
RESUME_BATCH = 8

# Observer of a pool's state: ``(kind, name, body)``; ``body`` None means removed.
# Called synchronously on every change, so it must be cheap and must not block.
ChangeObserver = Callable[[str, str, "dict[str, Any] | None"], None]


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
        # Listed instances by state and live ones by code digest, kept as they
        # change: status() (polled by operators and dashboards) walks nothing.
        self.state_counts: Counter[InstanceState] = Counter()
        self._counted: dict[str, InstanceState] = {}  # the state each is counted in
        self.code_digests: Counter[str] = Counter()
        # Waitable twins of "requests not yet answered" and "instances not yet
        # torn down": drain and retire wait on them instead of polling.
        self.outstanding = ActivityCount()  # held by Dispatcher.invoke per request
        self.live_instances = ActivityCount()  # one per entry of self.instances
        # Credits of ready instances with nothing in flight: capacity that will take
        # a request within microseconds (serving.count_credits keeps it).
        self.spare_credits = 0
        # Instances starting and not asked to stop, kept by the records themselves
        # (InstanceRecord.starting): ensure_capacity runs on every request.
        self.starting = 0
        self.ready_log = ReadyLog()  # "instance ready" per lone start, a line per burst
        # Ids of listed instances asked to stop (a stop reason set), kept by the
        # records themselves: live_count() is O(1) for every idle-out.
        self.asked_to_stop: set[str] = set()
        self._starts_held_back = False  # ensure_capacity wanted more than MAX_STARTING
        self._resume_pending = False  # a _resume_starts task is scheduled
        self.counters: Counter[str] = Counter()
        self.heartbeats = Heartbeats(
            self.name, self.health, self.counters, nursery.start_soon, runtime.name
        )
        self.accepting = True  # False while draining: no new requests
        self.closed = False  # True once stopping: no new instances
        self.last_start_error: str | None = None
        self.on_change: ChangeObserver | None = None  # instance added / changed / removed
        # Set by the node (memory pressure): no new instances; the reason says why.
        self.starts_held: str | None = None
        # Set when the runtime refused a start at a host limit (a short hold).
        self.host_limit = HostLimitHold()
        self.start_retry = StartRetry()  # a timed-out start retried for the queue
        self.observer: InstanceObserver | None = None  # metrics of instance lives
        # Pids of its running sandboxes, kept by the lifecycle as they start and
        # end; the dispatcher hands every pool the node-wide set.
        self.live_pids = LivePids()

    # --- requests -------------------------------------------------------------

    def submit(self, inv: Invocation) -> None:
        if not self.accepting:
            raise Draining("the node is draining and takes no new requests", retry_after_s=1)
        now = trio.current_time()
        if not self.breaker.admit(now):
            self.counters[PoolCounter.REJECTED_BREAKER_OPEN] += 1
            raise Unavailable(
                f"function {self.name!r} is failing repeatedly ({self.breaker.last_reason}); "
                "its circuit breaker is open",
                retry_after_s=self.breaker.retry_after_s(now),
            )
        if self.starts_held and not self.instances:
            self.counters[PoolCounter.REJECTED_STARTS_HELD] += 1
            raise Unavailable(
                f"function {self.name!r} has no running instance and the node starts none "
                f"now ({self.starts_held})",
                retry_after_s=5,
            )
        if not self.instances and self.host_limit.holding(now):
            self.counters[PoolCounter.REJECTED_HOST_LIMIT] += 1
            raise self.host_limit.error(self.name)
        try:
            self.buffer.put(inv)
        except HuseletError:
            self.counters[PoolCounter.REJECTED_QUEUE_FULL] += 1
            raise
        self.counters[PoolCounter.ACCEPTED] += 1
        self.ensure_capacity()

    def on_deadline(self, inv: Invocation) -> None:
        """The caller's deadline passed; an instance still working on it is stuck."""
        self.counters[PoolCounter.DEADLINE_EXCEEDED] += 1
        record = inv.instance
        if isinstance(record, InstanceRecord) and inv.request_id in record.inflight:
            expire_inflight(self, record, inv)

    # --- scaling ----------------------------------------------------------------

    def ensure_capacity(self) -> None:
        if self.closed or self.starts_held or self.host_limit.holding(trio.current_time()):
            return
        demand = self.buffer.live_count() - self.spare_credits - self.starting
        room = self.settings.max_instances - len(self.instances)
        want = max(demand, self.settings.min_instances - len(self.instances))
        count = min(want, room)
        if count > MAX_STARTING - self.starting:
            count = MAX_STARTING - self.starting
            self._starts_held_back = True  # resumed when a start under way finishes
        for _ in range(count):
            self._start_instance()

    def _start_instance(self) -> None:
        record = InstanceRecord(
            self.name, self._instance_changed, self._starting_changed, self._asked_to_stop
        )
        self.starting += 1  # a new record is starting
        START_GC.started()
        record.breaker_round = self.breaker.opened
        self.instances[record.id] = record
        self.live_instances.enter()
        self._instance_changed(record)
        self.counters[PoolCounter.INSTANCES_STARTED] += 1
        self._nursery.start_soon(run_instance, self, record, name=f"instance {record.id}")

    def _asked_to_stop(self, record: InstanceRecord, asked: bool) -> None:
        if not asked:
            self.asked_to_stop.discard(record.id)
        elif record.id in self.instances:  # not after its teardown unlisted it
            self.asked_to_stop.add(record.id)

    def unlist(self, record: InstanceRecord) -> bool:
        """Take an instance off the pool's list (its teardown); False if it was not on it."""
        if self.instances.pop(record.id, None) is None:
            return False
        was = self._counted.pop(record.id, None)
        if was is not None:
            self.state_counts[was] -= 1
        self.asked_to_stop.discard(record.id)
        self.live_instances.leave()
        return True

    def code_counted(self, digest: str | None, delta: int) -> None:
        """An instance took (+1) or gave back (-1) a lease on the image ``digest``."""
        if digest:
            left = self.code_digests[digest] + delta
            if left > 0:
                self.code_digests[digest] = left
            else:
                del self.code_digests[digest]  # none left: no key kept per old image

    def live_count(self) -> int:
        """Listed instances not asked to stop (starting, idle or busy)."""
        return len(self.instances) - len(self.asked_to_stop)

    def _starting_changed(self, starting: bool) -> None:
        self.starting += 1 if starting else -1
        if starting:
            START_GC.started()
        else:
            START_GC.finished()
        if not self.starting and self.ready_log.pending:
            self.ready_log.flush(self.name)  # a burst's starts are all done
        if (
            not starting
            and self._starts_held_back
            and not self._resume_pending
            # A batch: the pipeline stays >= MAX_STARTING - RESUME_BATCH deep.
            and self.starting <= MAX_STARTING - RESUME_BATCH
        ):
            self._starts_held_back = False
            # Not from inside a record's state change: at the next turn of the loop
            # (one task for all the starts that finish before it runs).
            self._resume_pending = True
            self._nursery.start_soon(self._resume_starts)

    def spawn(self, fn: Callable[..., Awaitable[object]], *args: object) -> None:
        """Run ``fn(*args)`` as a task of the pool (it ends with the pool)."""
        self._nursery.start_soon(fn, *args)

    async def _resume_starts(self) -> None:
        self._resume_pending = False
        # A breaker that opened meanwhile cancelled the starts: its trial decides.
        if self.breaker.state is BreakerState.CLOSED:
            self.ensure_capacity()

    def _instance_changed(self, record: InstanceRecord) -> None:
        if record.id in self.instances:  # never re-counted once its teardown unlisted it
            was = self._counted.get(record.id)
            if was is not None:
                self.state_counts[was] -= 1
            self.state_counts[record.state] += 1
            self._counted[record.id] = record.state
        if self.on_change is not None:
            body = {"function": self.name, "state": record.state.value}
            self.on_change("instance", record.id, body)

    def claim_link(self, instance_id: str, token: str) -> Any:
        record = self.instances.get(instance_id)
        if record is None or not token_matches(record.token, token):
            return None
        fresh = not record.token_spent and record.link is None
        if not fresh or record.state is not InstanceState.STARTING:
            return None  # single use: a replayed token gets nothing
        record.token_spent = True
        return record.offer_link

    # --- health -----------------------------------------------------------------

    def breaker_failure(self, record: InstanceRecord, reason: str) -> None:
        """Count an instance's failure against the breaker (by the lifecycle code)."""
        if record.breaker_round < self.breaker.opened:
            # Started before the breaker last opened (the old, broken code): its
            # failure is old news and must not fail the half-open trial.
            self.counters[PoolCounter.STALE_FAILURES] += 1
            return
        if self.breaker.record_failure(trio.current_time(), reason):
            self.counters[PoolCounter.BREAKER_OPENED] += 1
            log.error("circuit breaker opened", function=self.name, reason=reason)
            # Starts under way run the code that keeps failing: cancel them, so
            # the half-open trial starts afresh instead of waiting on one of them.
            for other in self.instances.values():
                if other.state is InstanceState.STARTING and other is not record:
                    other.stop(StopReason.START_CANCELLED)
            # Requests queued behind a crash loop would only wait for their deadline.
            self.buffer.fail_all(
                Unavailable(
                    f"function {self.name!r} is failing repeatedly ({reason}); "
                    "its circuit breaker is open",
                    retry_after_s=self.breaker.retry_after_s(trio.current_time()),
                )
            )

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
            record.stop(StopReason.REAPED)
            reaped += 1
        self.counters[PoolCounter.INSTANCES_REAPED] += reaped
        return reaped

    def instance_pids(self) -> list[int]:
        handles = [r.handle for r in self.instances.values() if r.handle is not None]
        return [h.pid for h in handles if h.pid is not None]

    def stop_all(self, reason: StopReason) -> None:
        self.accepting = False
        self.closed = True
        for record in list(self.instances.values()):
            record.stop(reason)

    def status(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "runtime": self.runtime.name,
            "max_instances": self.settings.max_instances,
            "instances": {s.value: self.state_counts[s] for s in InstanceState},
            "queued": self.buffer.live_count(),
            "inflight": sum(len(r.inflight) for r in self.instances.values()),
            "counters": dict(self.counters),
            "last_start_error": self.last_start_error,
            "breaker": self.breaker.describe(trio.current_time()),
            # Image digests its live instances run (two during a code update).
            "code": sorted(self.code_digests),
        }
