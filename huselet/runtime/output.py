"""Rate limits on what instances print, so a chatty handler cannot flood the daemon log.

Every instance (and zygote) gets one :class:`OutputLimiter` shared by its
output streams: two token buckets, lines per second and bytes per second,
each with a burst. A line over a bucket is dropped (its bytes were read, so
the instance never blocks on a full pipe); a line longer than
:data:`MAX_LINE` is cut to it. Drops are counted per instance and node-wide
(:data:`OUTPUT_STATS`, shown by ``huselet ctl status`` under
``node.output``) and summarised in the log as one ``instance output
dropped`` line at the first drop, then one per :data:`NOTICE_INTERVAL_S` at
most, and one at the stream's end. :class:`OutputLines` cuts a stream's
bytes into those lines, however they are read (a task per pipe, or the
runtime's shared descriptor watcher).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from huselet.observe.output import log_output_line

MAX_LINE = 4096  # bytes of one logged line; longer ones are truncated
LINES_PER_S = 100.0
LINES_BURST = 500.0
BYTES_PER_S = 64 * 1024.0
BYTES_BURST = 512 * 1024.0
NOTICE_INTERVAL_S = 5.0


@dataclass
class OutputStats:
    """Node-wide counters of instance output (all instances since start)."""

    logged_lines: int = 0
    dropped_lines: int = 0
    dropped_bytes: int = 0
    truncated_lines: int = 0

    def describe(self) -> dict[str, int | float]:
        return {
            "logged_lines": self.logged_lines,
            "dropped_lines": self.dropped_lines,
            "dropped_bytes": self.dropped_bytes,
            "truncated_lines": self.truncated_lines,
            "limit_lines_per_s": LINES_PER_S,
            "limit_bytes_per_s": BYTES_PER_S,
        }


OUTPUT_STATS = OutputStats()


class _Bucket:
    __slots__ = ("burst", "level", "rate", "stamp")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self.level = burst
        self.stamp = now

    def refill(self, now: float) -> None:
        self.level = min(self.burst, self.level + (now - self.stamp) * self.rate)
        self.stamp = now


class OutputLimiter:
    """One instance's output budget (shared by its stdout and stderr)."""

    def __init__(
        self,
        *,
        lines_per_s: float = LINES_PER_S,
        lines_burst: float = LINES_BURST,
        bytes_per_s: float = BYTES_PER_S,
        bytes_burst: float = BYTES_BURST,
        clock: Callable[[], float] = time.monotonic,
        stats: OutputStats = OUTPUT_STATS,
    ) -> None:
        now = clock()
        self._clock = clock
        self._lines = _Bucket(lines_per_s, lines_burst, now)
        self._bytes = _Bucket(bytes_per_s, bytes_burst, now)
        self.stats = stats
        self.dropped_lines = 0
        self.dropped_bytes = 0
        self._unreported_lines = 0
        self._unreported_bytes = 0
        self._last_notice = now - NOTICE_INTERVAL_S  # the first drop is told at once

    def admit(self, line: bytes) -> bytes | None:
        """The line to log (maybe truncated), or None when it is dropped."""
        now = self._clock()
        self._lines.refill(now)
        self._bytes.refill(now)
        cut = line[:MAX_LINE]
        if self._lines.level < 1 or self._bytes.level < len(cut):
            self.dropped_lines += 1
            self.dropped_bytes += len(line)
            self._unreported_lines += 1
            self._unreported_bytes += len(line)
            self.stats.dropped_lines += 1
            self.stats.dropped_bytes += len(line)
            return None
        self._lines.level -= 1
        self._bytes.level -= len(cut)
        if len(cut) < len(line):
            self.stats.truncated_lines += 1
        self.stats.logged_lines += 1
        return cut

    def notice_due(self, *, final: bool = False) -> tuple[int, int] | None:
        """(lines, bytes) dropped since the last notice, when one is due."""
        if not self._unreported_lines:
            return None
        now = self._clock()
        if not final and now - self._last_notice < NOTICE_INTERVAL_S:
            return None
        due = (self._unreported_lines, self._unreported_bytes)
        self._unreported_lines = self._unreported_bytes = 0
        self._last_notice = now
        return due


class OutputLines:
    """One output stream cut into lines for the log, within its instance's limiter."""

    __slots__ = ("fields", "limiter", "logger", "pending", "skipping", "stream_name")

    def __init__(
        self, stream_name: str, fields: dict[str, Any], logger: Any, limiter: OutputLimiter
    ) -> None:
        self.stream_name = stream_name
        self.fields = fields
        self.logger = logger
        self.limiter = limiter
        self.pending = b""
        self.skipping = False  # the rest of a line already logged truncated

    def feed(self, chunk: bytes) -> None:
        if self.skipping:
            end = chunk.find(b"\n")
            if end < 0:
                return
            chunk, self.skipping = chunk[end + 1 :], False
        *lines, self.pending = (self.pending + chunk).split(b"\n")
        for line in lines:
            self._log(line)
        if len(self.pending) > MAX_LINE:
            self._log(self.pending)
            self.pending, self.skipping = b"", True
        self._notice(final=False)

    def finish(self) -> None:
        """The stream ended: log a last unterminated line and the final drop notice."""
        if self.pending:
            self._log(self.pending)
            self.pending = b""
        self._notice(final=True)

    def _log(self, line: bytes) -> None:
        kept = self.limiter.admit(line)
        if kept is not None:
            # Lines the worker tagged carry their request id (and tracebacks come whole).
            log_output_line(kept, self.stream_name, self.fields, self.logger, MAX_LINE)

    def _notice(self, *, final: bool) -> None:
        due = self.limiter.notice_due(final=final)
        if due is not None:
            self.logger.warning(
                "instance output dropped",
                stream=self.stream_name,
                dropped_lines=due[0],
                dropped_bytes=due[1],
                total_dropped_lines=self.limiter.dropped_lines,
                **self.fields,
            )
