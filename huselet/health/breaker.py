"""A per-function circuit breaker for crash loops. Pure: time is passed in.

Failures are instance *start* failures and instance *deaths* — the signs of a
function that burns the node (a handler that raises is the function's own
business and counts as a working instance). When ``failures`` of them land
within ``window_s``, the breaker opens: requests get a fast 503 with the
reason and a Retry-After. After the open period one trial request is let
through (half-open); success closes the breaker, failure reopens it with the
period doubled, up to ``max_open_s``.
"""

from __future__ import annotations

import enum
import math
from collections import deque
from dataclasses import dataclass


class BreakerState(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(frozen=True)
class BreakerSettings:
    failures: int = 5
    window_s: float = 30.0
    open_s: float = 1.0
    max_open_s: float = 60.0


class CircuitBreaker:
    def __init__(self, settings: BreakerSettings) -> None:
        self.settings = settings
        self.state = BreakerState.CLOSED
        self._failures: deque[float] = deque()
        self._open_s = settings.open_s
        self._open_until = 0.0
        self._trial_until: float | None = None  # a half-open trial is in flight until then
        self.opened = 0  # times it opened, for counters
        self.last_reason = ""

    def admit(self, now: float) -> bool:
        """May a request enter now? In half-open state, exactly one may (the trial)."""
        if self.state is BreakerState.CLOSED:
            return True
        if self.state is BreakerState.OPEN:
            if now < self._open_until:
                return False
            self.state = BreakerState.HALF_OPEN
            self._trial_until = None
        # HALF_OPEN: one trial at a time; a trial that never resolves expires.
        if self._trial_until is not None and now < self._trial_until:
            return False
        self._trial_until = now + max(self._open_s, 1.0) * 10
        return True

    def retry_after_s(self, now: float) -> int:
        if self.state is BreakerState.OPEN:
            return max(1, math.ceil(self._open_until - now))
        return 1

    def allow_trial(self, now: float) -> bool:
        """End an open period early (an operator reloaded a fix); True if it was open."""
        if self.state is not BreakerState.OPEN:
            return False
        self._open_until = now
        return True

    def recent_failures(self, now: float) -> int:
        """Failures counted since the last success, within ``window_s`` of ``now``."""
        return sum(1 for t in self._failures if t > now - self.settings.window_s)

    def record_success(self, now: float) -> None:
        if self.state is not BreakerState.CLOSED:
            self.state = BreakerState.CLOSED
            self._open_s = self.settings.open_s
            self._trial_until = None
        self._failures.clear()

    def record_failure(self, now: float, reason: str) -> bool:
        """Count a failure; return True when this failure opened the breaker."""
        self.last_reason = reason
        if self.state is BreakerState.HALF_OPEN:
            self._open_s = min(self._open_s * 2, self.settings.max_open_s)
            return self._open(now)
        if self.state is BreakerState.OPEN:
            return False
        failures = self._failures
        failures.append(now)
        while failures and failures[0] <= now - self.settings.window_s:
            failures.popleft()
        if len(failures) >= self.settings.failures:
            return self._open(now)
        return False

    def _open(self, now: float) -> bool:
        self.state = BreakerState.OPEN
        self._open_until = now + self._open_s
        self._trial_until = None
        self._failures.clear()
        self.opened += 1
        return True

    def describe(self, now: float) -> dict[str, object]:
        return {
            "state": self.state.value,
            "recent_failures": len(self._failures),
            "opened": self.opened,
            "retry_after_s": self.retry_after_s(now) if self.state is BreakerState.OPEN else None,
            "reason": self.last_reason or None,
        }
