"""Instance metrics: cold-start phases, start failures by reason, deaths by cause.

:class:`InstanceMetrics` is the pools' :class:`~huselet.dispatch.observer.InstanceObserver`.
Phases of one start (each a histogram, by function and runtime):

- ``code``: the function's code fetched/installed and leased (0 for a directory);
- ``sandbox``: the runtime's start — waiting for the zygote, clone/exec, cgroup;
- ``connect``: until the worker dialled its link and passed the HELLO/token handshake;
- ``import``: the handler's import, until the worker said READY;
- ``first_reply``: the instance's first request, dispatch to result (lazy init shows here).

Start failures are counted by the :class:`~huselet.dispatch.reasons.StartFailure`
the start path raised where it failed (fetch, sandbox, timeout, import, oom, crash).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Iterator
from typing import TYPE_CHECKING

import trio
from prometheus_client.core import Metric

from huselet.dispatch.reasons import LINK_FAULTS, StartFailure, StopReason
from huselet.metrics.families import counter, histogram
from huselet.metrics.histogram import PHASE_BUCKETS, Histogram

if TYPE_CHECKING:
    from huselet.dispatch.instance import InstanceRecord
    from huselet.dispatch.invocation import Invocation
    from huselet.dispatch.pool import FunctionPool

PHASES = ("code", "sandbox", "connect", "import", "first_reply")
# Planned stops, by the pool's stop reason (anything else planned counts as "other").
PLANNED = {
    StopReason.IDLE: "idle",
    StopReason.REAPED: "reaped",
    StopReason.NODE_STOPPING: "node_stopping",
    StopReason.FUNCTION_RETIRED: "retired",
    StopReason.SERVED: "served",
    StopReason.START_FAILED: "start_failed",
    StopReason.START_CANCELLED: "start_cancelled",
}


def death_cause(record: InstanceRecord) -> str:
    """Why an instance ended that the node did not plan to stop (a fixed set of words)."""
    reason = record.stop_reason
    status = record.exit_status
    if reason is StopReason.DEADLINE:
        return "deadline_kill"
    if reason in (StopReason.MISSED_HEARTBEAT, StopReason.NOT_READING):
        return "heartbeat"
    if reason is StopReason.FROZEN:
        return "frozen"
    if status is not None and status.oom_killed:
        return "oom"
    if reason in LINK_FAULTS:
        return "link_error"
    if status is not None and status.signal is not None:
        return "signal"
    if status is not None:
        return "exit"
    return "other"


class FunctionInstances:
    __slots__ = ("deaths", "failures", "phases", "runtime", "stops")

    def __init__(self, runtime: str) -> None:
        self.runtime = runtime
        self.phases = {phase: Histogram(PHASE_BUCKETS) for phase in PHASES}
        self.failures: Counter[str] = Counter()
        self.deaths: Counter[str] = Counter()
        self.stops: Counter[str] = Counter()


class InstanceMetrics:
    def __init__(self) -> None:
        self.functions: dict[str, FunctionInstances] = {}

    def _of(self, pool: FunctionPool) -> FunctionInstances:
        m = self.functions.get(pool.name)
        if m is None or m.runtime != pool.runtime.name:
            m = self.functions[pool.name] = FunctionInstances(pool.runtime.name)
        return m

    def prune(self, keep: Collection[str]) -> None:
        for name in [n for n in self.functions if n not in keep]:
            del self.functions[name]

    # --- InstanceObserver ---------------------------------------------------------------

    def instance_ready(self, pool: FunctionPool, record: InstanceRecord) -> None:
        if record.ready_at is None:
            return
        phases = self._of(pool).phases
        at = record.created_at
        for phase, end in (
            ("code", record.marks.get("code")),
            ("sandbox", record.marks.get("sandbox")),
            ("connect", record.marks.get("connect")),
            ("import", record.ready_at),
        ):
            if end is not None:
                phases[phase].observe(max(0.0, end - at))
                at = end

    def start_failed(
        self, pool: FunctionPool, record: InstanceRecord, reason: str, kind: StartFailure
    ) -> None:
        # The start path typed it where it failed: the label is the enum's word.
        self._of(pool).failures[kind.value] += 1

    def first_reply(self, pool: FunctionPool, record: InstanceRecord, inv: Invocation) -> None:
        if inv.dispatched_at is not None:
            seconds = trio.current_time() - inv.dispatched_at
            self._of(pool).phases["first_reply"].observe(max(0.0, seconds))

    def instance_ended(self, pool: FunctionPool, record: InstanceRecord) -> None:
        m = self._of(pool)
        reason = record.stop_reason
        if reason is not None and reason in PLANNED:
            m.stops[PLANNED[reason]] += 1
        else:
            m.deaths[death_cause(record)] += 1

    # --- exposition ---------------------------------------------------------------------

    def collect(self) -> Iterator[Metric]:
        phases = histogram("huselet_cold_start_phase_seconds", "function", "runtime", "phase")
        failures = counter("huselet_cold_start_failures", "function", "runtime", "reason")
        deaths = counter("huselet_instance_deaths", "function", "cause")
        stops = counter("huselet_instance_stops", "function", "reason")
        for name, m in sorted(self.functions.items()):
            for phase, hist in m.phases.items():
                if hist.count:
                    phases.add_metric([name, m.runtime, phase], hist.buckets(), hist.sum)
            for reason, n in sorted(m.failures.items()):
                failures.add_metric([name, m.runtime, reason], n)
            for cause, n in sorted(m.deaths.items()):
                deaths.add_metric([name, cause], n)
            for reason, n in sorted(m.stops.items()):
                stops.add_metric([name, reason], n)
        yield from (phases, failures, deaths, stops)
