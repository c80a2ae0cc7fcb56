"""The daemon's log lines reach stderr from a thread of their own, through a bounded buffer.

A Trio daemon that writes its log with a plain ``StreamHandler`` blocks its
whole event loop whenever stderr does not take the line at once: journald
lagging under load, a pipe whose reader is slow (measured: a benchmark's
reader thread on a busy machine left the daemon blocked in ``write`` for
~14 % of its time at 4,000 requests/s), a terminal paused with Ctrl-S. Every
request and health loop of the node would wait on its logging.

:class:`BackgroundLogWriter` keeps formatting on the caller's thread (so a
record is rendered with the values it had) and hands the line to a writer
thread through a buffer bounded in bytes. When the buffer is full the line is
dropped and counted — never waited for — and the writer reports how many were
dropped, as a warning line of its own, at the point in the stream where they
are missing. :meth:`flush` (called by ``logging.shutdown`` at exit) waits for
the buffer to drain, with a deadline: a stuck stderr cannot hold the process.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import deque
from typing import TextIO

from huselet.log import FieldsRecord, render, rfc3339

# Well above a burst of log lines (~300 bytes each: ~13,000 lines), small
# against the daemon's memory.
DEFAULT_MAX_BUFFERED_BYTES = 4 << 20
FLUSH_TIMEOUT_S = 5.0
# After a write the writer lets lines gather this long before the next one. Each
# wake-up of the thread is a GIL hand-over with the event loop (two context
# switches, 100-600 µs of CPU on the VMs measured): at the access log's 100
# lines a second, one wake-up per line cost a request at concurrency 1 ~60 µs
# of daemon CPU. Idle, the writer waits on its condition and never wakes.
GATHER_S = 0.05
# What a record handed over unrendered (``emit_direct``) counts against the buffer's
# bound: an access line is ~300 bytes.
DIRECT_RECORD_BYTES = 400


class BackgroundLogWriter(logging.Handler):
    """A logging handler whose ``emit`` never blocks on the stream (see the module doc)."""

    def __init__(
        self,
        stream: TextIO,
        *,
        max_buffered_bytes: int = DEFAULT_MAX_BUFFERED_BYTES,
        gather_s: float = GATHER_S,
    ) -> None:
        super().__init__()
        self._stream = stream
        self._gather_s = gather_s
        self._max_bytes = max_buffered_bytes
        self._lines: deque[str | FieldsRecord] = deque()
        self._bytes = 0
        self._unreported = 0  # dropped since the writer last said so
        self.dropped = 0  # dropped since start (the buffer was full)
        self._writing = False  # a batch is out of the buffer but not yet written
        self._closing = False
        self._cond = threading.Condition(threading.Lock())
        self._thread = threading.Thread(target=self._run, name="huselet-log", daemon=True)
        self._thread.start()

    @property
    def buffered_bytes(self) -> int:
        return self._bytes

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
        except Exception:
            self.handleError(record)
            return
        self._enqueue(line, len(line) + 1)

    def emit_direct(self, record: FieldsRecord) -> None:
        """A record from :meth:`huselet.log.StructuredLogger.info_direct`: the same line,
        rendered by the writer thread (the record does not change once logged)."""
        # Rendering on the event loop cost a request ~36 µs of its thread's CPU at
        # 100 a second (measured: the JSON line, cold after each sleep); in the
        # writer's batch it runs off the loop, one record after another.
        self._enqueue(record, DIRECT_RECORD_BYTES)

    def _enqueue(self, line: str | FieldsRecord, size: int) -> None:
        with self._cond:
            if self._bytes + size > self._max_bytes:
                self.dropped += 1
                self._unreported += 1
                return
            wake = not self._lines  # the writer only waits while the buffer is empty
            self._lines.append(line)
            self._bytes += size
            if wake:
                self._cond.notify_all()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._lines and not self._unreported and not self._closing:
                    self._cond.wait()
                if self._closing and not self._lines and not self._unreported:
                    return
                batch = list(self._lines)
                self._lines.clear()
                self._bytes = 0
                dropped, self._unreported = self._unreported, 0
                self._writing = True
            lines = [x if isinstance(x, str) else _rendered(x) for x in batch]
            if dropped:
                lines.insert(0, _dropped_line(dropped))
            try:
                self._stream.write("\n".join(lines) + "\n")
                self._stream.flush()
            except (OSError, ValueError):
                pass  # stderr is gone (closed, EPIPE): there is nowhere left to say so
            finally:
                with self._cond:
                    self._writing = False
                    self._cond.notify_all()
            if not self._closing:
                time.sleep(self._gather_s)  # lines logged meanwhile go out in one write

    def flush(self, timeout_s: float = FLUSH_TIMEOUT_S) -> None:
        """Wait until every buffered line is written, or ``timeout_s`` has passed."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while self._lines or self._writing or self._unreported:
                left = deadline - time.monotonic()
                if left <= 0 or not self._thread.is_alive():
                    return
                self._cond.wait(left)

    def close(self) -> None:
        self.flush()
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._thread.join(FLUSH_TIMEOUT_S)
        super().close()


def _rendered(record: FieldsRecord) -> str:
    try:
        return record.line()
    except Exception as exc:  # the writer thread must outlive any record
        # Its fields could not become JSON (default=str makes this all but impossible):
        # say so in its place rather than lose the line without a trace.
        return render(
            record.created,
            "warning",
            "log",
            "log record could not be rendered",
            {"record_msg": record.msg, "error": f"{type(exc).__name__}: {exc}"},
        )


def _dropped_line(count: int) -> str:
    """The writer's own record of lines it had to drop (the JSON shape of huselet.log)."""
    return json.dumps(
        {
            "ts": rfc3339(time.time()),
            "level": "warning",
            "component": "log",
            "msg": "log lines dropped: stderr did not take them fast enough",
            "dropped": count,
        }
    )
