"""The descriptor loop: the daemon's open file descriptors against ``RLIMIT_NOFILE``.

Enter: the ingress answers every new connection 503 at once, and idle
instances (each holds a link socket and pipes) are reaped. Leave: connections
are served again. Built on :mod:`huselet.health.pressure`'s :class:`Hysteresis`
and reports, like the disk and memory loops.
"""

from __future__ import annotations

import errno
import os
import resource
from collections.abc import Callable
from dataclasses import dataclass

from huselet.health.counters import HealthCounter
from huselet.health.pressure import (
    Change,
    ConnectionGate,
    Hysteresis,
    InstanceControl,
    pct,
)
from huselet.health.supervisor import HealthState, LoopReport
from huselet.timegrid import note_activity, sleep_on_grid


@dataclass(frozen=True)
class FdSample:
    open: int
    limit: int  # soft RLIMIT_NOFILE; 0: unlimited

    @property
    def percent(self) -> float:
        return 100.0 * self.open / self.limit if self.limit else 0.0


def open_fd_count() -> int:
    """The daemon's open descriptors.

    Linux 6.2+ reports the count as the size of ``/proc/self/fd`` (from the
    descriptor bitmap: O(1) for our purposes); older kernels report 0 there,
    and then the directory is listed — O(descriptors), ~3 per instance.
    """
    counted = os.stat("/proc/self/fd").st_size
    if counted > 0:
        return counted
    return len(os.listdir("/proc/self/fd")) - 1  # minus listdir's own descriptor


def measure_fds() -> FdSample:
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    limit = 0 if soft == resource.RLIM_INFINITY else soft
    try:
        count = open_fd_count()
    except OSError as exc:
        if exc.errno not in (errno.EMFILE, errno.ENFILE):
            raise
        count = limit  # not even one more descriptor: that is the answer
    return FdSample(count, limit)


class FdPressure:
    name = "descriptors"

    def __init__(
        self,
        ingress: ConnectionGate,
        dispatcher: InstanceControl,
        *,
        interval_s: float,
        enter_percent: float,
        leave_percent: float,
        measure: Callable[[], FdSample] = measure_fds,
    ) -> None:
        self.ingress = ingress
        self.dispatcher = dispatcher
        self.interval_s = interval_s
        self.gate = Hysteresis(enter_percent, leave_percent)
        self.measure = measure
        self.last: FdSample | None = None

    async def run(self, report: LoopReport) -> None:
        while True:
            await self.check(report)
            if self.gate.active:
                note_activity()  # healing: the node keeps its 1 s tick
            # Descriptors are made by connections and instance starts, which are
            # activity: a quiet node's count cannot climb much between idle ticks.
            await sleep_on_grid(self.interval_s, stretch=True)

    async def check(self, report: LoopReport) -> None:
        # Cheap (one directory listing), and a thread would itself be short of descriptors.
        sample = self.measure()
        self.last = sample
        report.counters[HealthCounter.SAMPLES] += 1
        percent = sample.percent
        figure = f"{sample.open} of {sample.limit or 'unlimited'} descriptors open ({pct(percent)})"
        change = self.gate.update(percent)
        if change is Change.ENTER:
            report.counters[HealthCounter.ENTERED] += 1
            # Callers see this: no paths, just the figure.
            reason = f"the node is short of file descriptors: {figure}"
            self.ingress.refuse_connections(reason)
            report.action("refusing new connections", percent=round(percent, 1), reason=reason)
            reaped = self.dispatcher.reap_idle(reason)
            report.counters[HealthCounter.INSTANCES_REAPED] += reaped
            report.action("reaped idle instances", count=reaped, percent=round(percent, 1))
        elif change is Change.LEAVE:
            report.counters[HealthCounter.LEFT] += 1
            self.ingress.refuse_connections(None)
            report.action("accepting connections again", percent=round(percent, 1))
        if self.gate.active:
            report.set(
                HealthState.DEGRADED,
                f"{figure}: new connections refused until below {self.gate.leave:g}%",
            )
        else:
            report.set(HealthState.OK, figure)
