"""HealthSupervisor: runs the health loops and keeps their reports.

A loop is a small object with a ``name`` and ``async def run(report)``; it
updates its :class:`LoopReport` (state, last action, counters) as it goes.
The supervisor restarts a loop that crashes (with backoff), because a broken
health loop must not take the node down with it — the crash itself is
reported as the loop's state.
"""

from __future__ import annotations

import enum
import time
from collections import Counter
from typing import Any, Protocol

import trio

from huselet.health.counters import HealthCounter
from huselet.log import get_logger

log = get_logger("health")

RESTART_BACKOFF_S = (0.1, 1.0, 5.0, 30.0)
# Log hysteresis: after a logged state change, further changes of the same loop
# within this window are counted, not logged; once it has passed, the next report
# logs where the loop ended up and how many changes it went through (a busy host's
# lag probe flapping every 100 ms costs one line per window, not one per tick).
LOG_HOLD_S = 5.0


class HealthState(enum.Enum):
    OK = "ok"
    DEGRADED = "degraded"
    FAILING = "failing"


class LoopReport:
    """What one loop says about its fault class."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.state = HealthState.OK
        self.detail = ""
        self.last_action: str | None = None
        self.last_action_at: float | None = None
        self.counters: Counter[str] = Counter()
        self._logged = HealthState.OK  # the state the log last reported
        self._logged_at = -LOG_HOLD_S  # time.monotonic() of that record
        self._unlogged_changes = 0

    def set(self, state: HealthState, detail: str = "") -> None:
        if state is not self.state:
            self._unlogged_changes += 1
            self.counters[HealthCounter.STATE_CHANGES] += 1
        self.state = state
        self.detail = detail
        if not self._unlogged_changes:
            return
        now = time.monotonic()
        if now - self._logged_at < LOG_HOLD_S:
            return
        if state is not self._logged:
            log.info(
                "health state changed",
                loop=self.name,
                old=self._logged.value,
                new=state.value,
                detail=detail,
                changes=self._unlogged_changes,
            )
        elif self._unlogged_changes > 1:
            log.info(
                "health state flapped",
                loop=self.name,
                state=state.value,
                detail=detail,
                changes=self._unlogged_changes,
            )
        else:
            return  # left and came back once within the window: not worth a line
        self._logged, self._logged_at, self._unlogged_changes = state, now, 0

    def action(self, what: str, **fields: Any) -> None:
        """Record (and log) a healing action."""
        self.last_action = what
        self.last_action_at = trio.current_time()
        self.counters[HealthCounter.ACTIONS] += 1
        log.warning("healing action", loop=self.name, action=what, **fields)

    def describe(self) -> dict[str, Any]:
        return {
            "loop": self.name,
            "state": self.state.value,
            "detail": self.detail,
            "last_action": self.last_action,
            "last_action_age_s": (
                round(trio.current_time() - self.last_action_at, 3)
                if self.last_action_at is not None
                else None
            ),
            "counters": dict(self.counters),
        }


class HealthLoop(Protocol):
    name: str

    async def run(self, report: LoopReport) -> None: ...


class HealthSupervisor:
    def __init__(self, loops: list[HealthLoop]) -> None:
        self.loops = loops
        self.reports = {loop.name: LoopReport(loop.name) for loop in loops}

    def add(self, loop: HealthLoop) -> None:
        self.loops.append(loop)
        self.reports[loop.name] = LoopReport(loop.name)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            for loop in self.loops:
                nursery.start_soon(self._keep_running, loop, name=f"health {loop.name}")
            task_status.started()

    async def _keep_running(self, loop: HealthLoop) -> None:
        report = self.reports[loop.name]
        crashes = 0
        while True:
            try:
                await loop.run(report)
                return
            except Exception as exc:
                delay = RESTART_BACKOFF_S[min(crashes, len(RESTART_BACKOFF_S) - 1)]
                crashes += 1
                report.counters[HealthCounter.CRASHES] += 1
                report.set(HealthState.FAILING, f"loop crashed: {type(exc).__name__}: {exc}")
                log.exception("health loop crashed", loop=loop.name, restart_in_s=delay)
                await trio.sleep(delay)

    def overall(self) -> HealthState:
        states = {r.state for r in self.reports.values()}
        for state in (HealthState.FAILING, HealthState.DEGRADED):
            if state in states:
                return state
        return HealthState.OK

    def describe(self) -> dict[str, Any]:
        return {
            "state": self.overall().value,
            "loops": [r.describe() for r in self.reports.values()],
        }
