"""A bound on how many warnings a hostile client can make the ingress log."""

from __future__ import annotations

import math

import trio

from huselet.log import get_logger

log = get_logger("gateway")


class WarningBudget:
    """At most ``burst`` warnings per ``window_s``; the rest are counted and go to debug."""

    def __init__(self, burst: int, window_s: float) -> None:
        self._burst = burst
        self._window_s = window_s
        self._window_end = -math.inf
        self._used = 0
        self._suppressed = 0

    def warn(self, msg: str, **fields: object) -> None:
        now = trio.current_time()
        if now >= self._window_end:
            self._window_end = now + self._window_s
            self._used = 0
        if self._used < self._burst:
            self._used += 1
            log.warning(msg, suppressed=self._suppressed, **fields)
            self._suppressed = 0
        else:
            self._suppressed += 1
            log.debug(msg, **fields)
