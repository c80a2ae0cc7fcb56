"""The "instance ready" log of one pool: a line per lone start, one line per burst.

A start that runs alone (a replacement, a scale-up by one) logs ``instance
ready`` at info, as it always did: operators and the fault benches follow
single instances by it. A burst — ``min_instances`` at start-up, a scale-up
by many — would log thousands of such lines, each a formatted record
written by the daemon while it starts the next instances (~5 % of the event
loop's time per start at 2,000). Within a burst each instance's line goes
to debug, and once no start of the pool is under way, one info line
``instances ready`` says how many became ready, over how long, and their
start times (mean, max).
"""

from __future__ import annotations

from typing import Any

from huselet.log import get_logger

# The pool's logger: these lines were always the pool's, and dashboards filter on it.
log = get_logger("pool")


class ReadyLog:
    """Counts the ready instances of a burst until the pool has no start under way."""

    __slots__ = ("_count", "_first_at", "_last_at", "_max_ms", "_sum_ms")

    def __init__(self) -> None:
        self._count = 0
        self._sum_ms = 0.0
        self._max_ms = 0.0
        self._first_at = 0.0
        self._last_at = 0.0

    @property
    def pending(self) -> int:
        """Ready instances counted but not yet reported."""
        return self._count

    def ready(
        self, function: str, others_starting: int, now: float, start_ms: float, **fields: Any
    ) -> None:
        """One instance is ready; ``others_starting``: the pool's other starts under way."""
        if not self._count and not others_starting:
            log.info("instance ready", start_ms=start_ms, function=function, **fields)
            return
        if log.is_debug():
            log.debug("instance ready", start_ms=start_ms, function=function, **fields)
        if not self._count:
            self._first_at = now
        self._count += 1
        self._sum_ms += start_ms
        self._max_ms = max(self._max_ms, start_ms)
        self._last_at = now

    def flush(self, function: str) -> None:
        """No start is under way any more: report the burst (if one was counted)."""
        if not self._count:
            return
        log.info(
            "instances ready",
            function=function,
            count=self._count,
            over_ms=round((self._last_at - self._first_at) * 1000, 1),
            start_ms_mean=round(self._sum_ms / self._count, 2),
            start_ms_max=round(self._max_ms, 2),
        )
        self._count = 0
        self._sum_ms = self._max_ms = 0.0
