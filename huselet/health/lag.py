"""The event-loop lag probe: how long was the loop unable to respond?

Every ``period`` the probe wakes and reports the worse of how much later than
asked it woke up and the longest stall the loop itself saw since the last
report (:class:`~huselet.health.stalls.LoopStalls`: every run batch and I/O
wait overshoot, so a stall between two reports is not missed). A Trio loop
that is blocked (a synchronous call that hangs, a CPU hog in a callback)
shows up here at the end of the stall or the next report — and the watchdog
stops petting systemd, which then restarts the daemon. The report period is
1 s by default: the probe used to wake ten times a second to catch stalls,
about half of an idle daemon's CPU.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import trio

from huselet.health.counters import HealthCounter
from huselet.health.stalls import LoopStalls
from huselet.health.supervisor import HealthState, LoopReport
from huselet.timegrid import GridTimer

if TYPE_CHECKING:
    from huselet.metrics.histogram import Histogram


class LagProbe:
    name = "event_loop"

    def __init__(
        self, *, period_s: float = 1.0, degraded_ms: float = 100.0, failing_ms: float = 1000.0
    ) -> None:
        self.period_s = period_s
        self.degraded_ms = degraded_ms
        self.failing_ms = failing_ms
        self.last_lag_ms = 0.0
        self.max_lag_ms = 0.0
        self.last_beat = 0.0  # trio time of the last completed measurement
        self.histogram: Histogram | None = None  # lag samples for the metrics (seconds)
        self.stalls = LoopStalls()

    async def run(self, report: LoopReport) -> None:
        self.last_beat = trio.current_time()
        trio.lowlevel.add_instrument(self.stalls)
        try:
            await self._measure(report)
        finally:
            trio.lowlevel.remove_instrument(self.stalls)

    async def _measure(self, report: LoopReport) -> None:
        self.stalls.take()  # what happened before the probe ran is not its period's
        while True:
            # On the shared grid: the node's other periodic loops wake in these iterations.
            # Every idle tick instead when the node is quiet (the instrument still
            # sees every stall; the report comes later): see huselet.health.idle.
            asked = await GridTimer.current().sleep_on_grid(self.period_s, stretch=True)
            now = trio.current_time()
            self.last_beat = now
            lag_ms = max(0.0, (now - asked) * 1000, self.stalls.take() * 1000)
            self.last_lag_ms = lag_ms
            self.max_lag_ms = max(self.max_lag_ms, lag_ms)
            if self.histogram is not None:
                self.histogram.observe(lag_ms / 1000)
            report.counters[HealthCounter.SAMPLES] += 1
            if lag_ms >= self.failing_ms:
                report.counters[HealthCounter.STALLS] += 1
                report.set(HealthState.FAILING, f"event loop stalled {lag_ms:.0f} ms")
            elif lag_ms >= self.degraded_ms:
                report.set(HealthState.DEGRADED, f"event loop lag {lag_ms:.0f} ms")
            else:
                report.set(HealthState.OK, f"lag {lag_ms:.1f} ms")

    @property
    def report_period_s(self) -> float:
        """The longest gap between two reports: the period, or the idle tick when longer."""
        return max(self.period_s, GridTimer.current().idle_tick_s or 0.0)

    def responsive(self, within_s: float) -> bool:
        """Did a measurement complete within the last ``within_s`` seconds?"""
        return trio.current_time() - self.last_beat <= within_s
