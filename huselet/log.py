"""Structured logging: one JSON object per line on stderr.

Usage::

    log = get_logger("dispatcher")
    log.info("instance started", function="hello", instance="i-3", ms=4.2)

journald, `jq` and log shippers read this directly. Field values that are not
JSON types are rendered with ``str``. ``ts`` is an RFC 3339 UTC timestamp with
microseconds (``2026-11-30T05:10:00.123456Z``).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

_ROOT = "huselet"
_second: tuple[int, str] = (-1, "")


def rfc3339(created: float) -> str:
    """``created`` (epoch seconds) as RFC 3339 UTC with microseconds."""
    global _second
    whole = int(created)
    if _second[0] != whole:  # the formatted second is reused by every record within it
        _second = (whole, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)))
    return f"{_second[1]}.{int((created - whole) * 1_000_000):06d}Z"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": rfc3339(record.created),
            "level": record.levelname.lower(),
            "component": record.name.removeprefix(_ROOT + ".") or _ROOT,
            "msg": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if fields:
            entry.update(fields)
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


class StructuredLogger:
    """A thin wrapper so call sites pass fields as keywords."""

    __slots__ = ("_logger",)

    def __init__(self, logger: logging.Logger) -> None:
        self._logger = logger

    def _log(self, level: int, msg: str, exc_info: bool, fields: dict[str, Any]) -> None:
        if self._logger.isEnabledFor(level):
            self._logger.log(level, msg, exc_info=exc_info, extra={"fields": fields})

    def debug(self, msg: str, **fields: Any) -> None:
        self._log(logging.DEBUG, msg, False, fields)

    def info(self, msg: str, **fields: Any) -> None:
        self._log(logging.INFO, msg, False, fields)

    def warning(self, msg: str, **fields: Any) -> None:
        self._log(logging.WARNING, msg, False, fields)

    def error(self, msg: str, **fields: Any) -> None:
        self._log(logging.ERROR, msg, False, fields)

    def exception(self, msg: str, **fields: Any) -> None:
        self._log(logging.ERROR, msg, True, fields)

    def is_debug(self) -> bool:
        return self._logger.isEnabledFor(logging.DEBUG)

    def is_info(self) -> bool:
        return self._logger.isEnabledFor(logging.INFO)


def dropped_lines() -> int:
    """Log lines the background writer dropped since start (its buffer was full)."""
    return sum(getattr(h, "dropped", 0) for h in logging.getLogger(_ROOT).handlers)


def get_logger(component: str) -> StructuredLogger:
    return StructuredLogger(logging.getLogger(f"{_ROOT}.{component}"))


def setup_logging(
    level: str = "info", stream: Any = None, *, background: bool = False, buffer_kb: int = 4096
) -> None:
    """Route the ``huselet`` logger tree to ``stream`` (stderr) as JSON lines.

    ``background``: written by a thread through a buffer of ``buffer_kb``
    (:mod:`huselet.logwriter`), as a daemon must: a slow stderr never blocks
    its event loop. Command-line tools write directly.
    """
    handler: logging.Handler
    if background:
        from huselet.logwriter import BackgroundLogWriter

        handler = BackgroundLogWriter(stream or sys.stderr, max_buffered_bytes=buffer_kb << 10)
    else:
        handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger(_ROOT)
    for old in root.handlers:
        old.close()  # a background writer's thread ends with it
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False
    logging.Formatter.converter = time.gmtime
