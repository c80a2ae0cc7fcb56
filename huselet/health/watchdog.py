"""The systemd watchdog: ``WATCHDOG=1`` at half of ``WATCHDOG_USEC``, but only
while the daemon is really working.

Petting from a timer alone would prove only that *a* timer runs. Here each pet
first asks two questions: did the lag probe complete a measurement recently
(the event loop is responsive), and are the critical components alive (each a
callable returning ``None`` when healthy or the reason it is not)? If either
answer is no, the pet is skipped and logged; systemd restarts the daemon once
``WatchdogSec`` passes without one.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import trio

from huselet.health.counters import HealthCounter
from huselet.health.lag import LagProbe
from huselet.health.supervisor import HealthState, LoopReport
from huselet.notify import SystemdNotifier
from huselet.timegrid import sleep_on_grid

CriticalCheck = Callable[[], str | None]


def watchdog_interval_s(env: dict[str, str] | None = None) -> float | None:
    """The interval systemd expects pets at, or None when the watchdog is off for us."""
    env = dict(os.environ) if env is None else env
    usec = env.get("WATCHDOG_USEC")
    if not usec:
        return None
    pid = env.get("WATCHDOG_PID")
    if pid and pid.isdigit() and int(pid) != os.getpid():
        return None  # meant for another process (e.g. a wrapper that exec'd us)
    try:
        value = int(usec)
    except ValueError:
        return None
    return value / 1_000_000 if value > 0 else None


class WatchdogPetter:
    name = "watchdog"

    def __init__(
        self,
        notifier: SystemdNotifier,
        lag: LagProbe,
        critical: dict[str, CriticalCheck],
        *,
        interval_s: float | None,
    ) -> None:
        self.notifier = notifier
        self.lag = lag
        self.critical = critical
        self.interval_s = interval_s
        self.pets = 0
        self.skipped = 0

    def reasons_not_to_pet(self) -> list[str]:
        assert self.interval_s is not None
        reasons = []
        # The probe runs every lag.period_s; missing a pet window means a stall.
        gap = self.lag.report_period_s  # the idle tick's when the node is quiet
        if not self.lag.responsive(within_s=max(self.interval_s / 2, 3 * gap)):
            reasons.append("event loop unresponsive")
        for name, check in self.critical.items():
            problem = check()
            if problem:
                reasons.append(f"{name}: {problem}")
        return reasons

    async def run(self, report: LoopReport) -> None:
        if self.interval_s is None or not self.notifier.enabled:
            report.set(HealthState.OK, "systemd watchdog not enabled")
            await trio.sleep_forever()
        assert self.interval_s is not None
        report.set(HealthState.OK, f"petting every {self.interval_s / 2:g}s")
        while True:
            reasons = self.reasons_not_to_pet()
            if reasons:
                self.skipped += 1
                report.counters[HealthCounter.SKIPPED] += 1
                report.set(HealthState.FAILING, "not petting: " + "; ".join(reasons))
            else:
                self.notifier.notify(WATCHDOG="1")
                self.pets += 1
                report.counters[HealthCounter.PETS] += 1
                report.set(HealthState.OK, f"petting every {self.interval_s / 2:g}s")
            await sleep_on_grid(self.interval_s / 2)
