"""The idle tick: an idle node's periodic loops wake every few seconds, not every second.

Each wake-up of an idle daemon costs CPU for the pages it touches after a
sleep (on a VM, several µs a page), so an idle node's cost is its wake-ups
times what each touches (issue 12: idle instances must cost ~nothing). The
health loops, the fork runtime's housekeeping and the cgroup refill tick on
the shared 1 s grid (:mod:`huselet.timegrid`); nothing they watch changes on
an idle node, except what the host does to it (memory, disk), which the
memory and disk loops still read every idle tick.

:class:`IdleTick` is the health loop that switches this on: it configures the
run's :class:`~huselet.timegrid.GridTimer` from ``[health] idle_tick_ms`` and
``idle_after_ms``, follows the dispatcher's live pids (an instance started or
ended is activity: :class:`PidActivity`), and reports the node's state
(``quiet`` with the idle tick, or ``busy``) and how often it went quiet and
snapped back. Requests are noted by the dispatcher (one attribute write per
request); a pressure loop that is under pressure notes activity on each of
its ticks, so the node stays on the 1 s tick while it heals.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import trio

from huselet.health.counters import HealthCounter
from huselet.health.supervisor import HealthState, LoopReport
from huselet.timegrid import GridTimer, note_activity

if TYPE_CHECKING:
    from huselet.health.pressure import InstanceControl

REPORT_PERIOD_S = 1.0  # on the grid with the other loops (stretched when quiet)


class PidActivity:
    """A :class:`~huselet.dispatch.livepids.PidListener`: each start or end is activity."""

    def added(self, pid: int) -> None:
        note_activity()

    def removed(self, pid: int) -> None:
        note_activity()


class IdleTick:
    name = "idle_tick"

    def __init__(
        self, dispatcher: InstanceControl | None, *, tick_s: float | None, after_s: float
    ) -> None:
        self.dispatcher = dispatcher
        self.tick_s = tick_s
        self.after_s = after_s
        self._watching = False

    async def run(self, report: LoopReport) -> None:
        timer = GridTimer.current()
        timer.configure_idle(tick_s=self.tick_s, after_s=self.after_s)
        if self.dispatcher is not None and not self._watching:
            self._watching = True  # once: a restarted loop must not subscribe twice
            self.dispatcher.watch_pids(PidActivity())
        if self.tick_s is None:
            report.set(HealthState.OK, "idle tick off: the periodic loops tick every second")
            await trio.sleep_forever()
        was_quiet = False
        snap_backs = timer.snap_backs
        while True:
            quiet = timer.quiet()
            if quiet and not was_quiet:
                report.counters[HealthCounter.WENT_QUIET] += 1
            report.counters[HealthCounter.SNAP_BACKS] += timer.snap_backs - snap_backs
            snap_backs = timer.snap_backs
            was_quiet = quiet
            if quiet:
                report.set(HealthState.OK, f"quiet: the periodic loops tick every {self.tick_s:g}s")
            else:
                report.set(
                    HealthState.OK,
                    f"busy: the periodic loops tick every second "
                    f"(every {self.tick_s:g}s after {self.after_s:g}s without activity)",
                )
            # Quiet: reported once, then not woken until activity.
            await timer.sleep_on_grid(REPORT_PERIOD_S, until_activity=True)
