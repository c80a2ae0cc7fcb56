"""The log ring: each function's recent log records, kept in memory for ``huselet ctl logs``.

A :class:`logging.Handler` on the ``huselet`` logger tree keeps every record
at info or above that names a tracked ``function`` (instance starts, the
function's own output and tracebacks, access records, errors) in a bounded
deque per function; the request story adds records the journal does not get
(admission, sampled-out access records) straight to the ring. Journald stays
the durable store: the ring is for "what just happened to this function".

Rings exist only for the functions the dispatcher serves (``known``), so a
client cannot make the daemon keep records under arbitrary names, and a
removed function's ring goes with it.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from huselet.log import rfc3339

_ROOT = "huselet"
_SCALARS = (str, int, float, bool, type(None))
MAX_QUERY_RECORDS = 5000


def _plain(value: Any) -> Any:
    """A value the admin socket (msgpack) can carry."""
    if isinstance(value, _SCALARS):
        return value
    if isinstance(value, list | tuple) and all(isinstance(v, _SCALARS) for v in value):
        return list(value)
    return str(value)


class LogRing(logging.Handler):
    def __init__(self, per_function: int, known: Callable[[str], bool]) -> None:
        super().__init__(level=logging.INFO)
        self.per_function = per_function
        self._known = known  # is this a function the node serves?
        self._rings: dict[str, deque[dict[str, Any]]] = {}
        self._seq = 0

    def _ring(self, function: Any) -> deque[dict[str, Any]] | None:
        ring = self._rings.get(function) if isinstance(function, str) else None
        if ring is None and isinstance(function, str) and self._known(function):
            self.prune()
            ring = self._rings[function] = deque(maxlen=self.per_function)
        return ring

    def prune(self) -> None:
        """Drop the rings of functions the node no longer serves."""
        for name in [n for n in self._rings if not self._known(n)]:
            del self._rings[name]

    def emit(self, record: logging.LogRecord) -> None:
        fields = getattr(record, "fields", None)
        if not fields:
            return
        ring = self._ring(fields.get("function"))
        if ring is None:
            return
        entry: dict[str, Any] = {
            "ts": record.created,
            "level": record.levelname.lower(),
            "component": record.name.removeprefix(_ROOT + ".") or _ROOT,
            "msg": record.getMessage(),
        }
        for key, value in fields.items():
            entry.setdefault(key, _plain(value))
        if record.exc_info and record.exc_info[1] is not None:
            entry["exc"] = logging.Formatter().formatException(record.exc_info)
        self._add(ring, entry)

    def append(self, level: str, component: str, msg: str, fields: dict[str, Any]) -> None:
        """Add a record for ``fields['function']`` without going through logging."""
        ring = self._ring(fields.get("function"))
        if ring is None:
            return
        entry = {"ts": time.time(), "level": level, "component": component, "msg": msg}
        for key, value in fields.items():
            entry.setdefault(key, _plain(value))
        self._add(ring, entry)

    def _add(self, ring: deque[dict[str, Any]], entry: dict[str, Any]) -> None:
        self._seq += 1
        entry["seq"] = self._seq
        ring.append(entry)

    def query(
        self,
        function: str,
        *,
        request_id: str | None = None,
        after_seq: int = 0,
        since_s: float | None = None,
        limit: int = 1000,
    ) -> dict[str, Any] | None:
        """Records of ``function`` newer than ``after_seq`` (and ``since_s`` seconds), oldest
        first, at most ``limit`` (the newest ones); None if the function has no ring."""
        self.prune()
        if not self._known(function):
            return None
        ring = self._rings.get(function) or ()
        limit = max(1, min(limit, MAX_QUERY_RECORDS))
        oldest = time.time() - since_s if since_s is not None else None
        out = []
        for entry in ring:
            if entry["seq"] <= after_seq:
                continue
            if oldest is not None and entry["ts"] < oldest:
                continue
            if request_id is not None and entry.get("request_id") != request_id:
                continue
            out.append(entry)
        out = out[-limit:]
        records = [{**e, "ts": rfc3339(e["ts"])} for e in out]
        return {"function": function, "records": records, "next_seq": self._seq}
