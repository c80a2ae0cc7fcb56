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
from collections.abc import Callable, Mapping
from typing import Any

from huselet.log import FieldsRecord, rfc3339

_ROOT = "huselet"
_SCALARS = (str, int, float, bool, type(None))
MAX_QUERY_RECORDS = 5000
Entry = tuple[int, float, str, str, str, Mapping[str, Any]]


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
        # (seq, time, level, component, msg, fields): built into a dict when read.
        self._rings: dict[str, deque[Entry]] = {}
        self._seq = 0

    def _ring(self, function: Any) -> deque[Entry] | None:
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
        plain = {key: _plain(value) for key, value in fields.items()}
        if record.exc_info and record.exc_info[1] is not None:
            plain["exc"] = logging.Formatter().formatException(record.exc_info)
        component = record.name.removeprefix(_ROOT + ".") or _ROOT
        self._seq += 1
        ring.append(
            (self._seq, record.created, record.levelname.lower(), component, record.getMessage(),
             plain)
        )  # fmt: skip

    def emit_direct(self, record: FieldsRecord) -> None:
        """A record from :meth:`huselet.log.StructuredLogger.info_direct`, kept as given."""
        self.append(record.level, record.component, record.msg, record.fields, record.created)

    def append(
        self,
        level: str,
        component: str,
        msg: str,
        fields: Mapping[str, Any],
        created: float | None = None,
    ) -> None:
        """Add a record for ``fields['function']`` without going through logging.

        The hot path's way in (admission, sampled-out access records): the
        fields are kept as given — the caller passes plain values and does not
        touch them afterwards (a dict, or a lazy record of
        :mod:`huselet.observe.records`) — and turned into a record only when read.
        """
        # The handler's lock: emit() (any thread that logs) holds it too, so sequence
        # numbers stay unique and a --follow cursor never skips a record.
        with self.lock:  # type: ignore[union-attr]
            ring = self._ring(fields.get("function"))
            if ring is None:
                return
            self._seq += 1
            ts = time.time() if created is None else created
            ring.append((self._seq, ts, level, component, msg, fields))

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
        with self.lock:  # type: ignore[union-attr]
            self.prune()
            if not self._known(function):
                return None
            ring = list(self._rings.get(function) or ())  # a snapshot: other threads log
            next_seq = self._seq
        limit = max(1, min(limit, MAX_QUERY_RECORDS))
        oldest = time.time() - since_s if since_s is not None else None
        out = []
        for seq, ts, level, component, msg, fields in ring:
            if seq <= after_seq:
                continue
            if oldest is not None and ts < oldest:
                continue
            if request_id is not None and fields.get("request_id") != request_id:
                continue
            out.append((seq, ts, level, component, msg, fields))
        records = []
        for seq, ts, level, component, msg, fields in out[-limit:]:
            record: dict[str, Any] = {
                "ts": rfc3339(ts),
                "level": level,
                "component": component,
                "msg": msg,
            }
            for key, value in fields.items():
                record.setdefault(key, value)
            record["seq"] = seq
            records.append(record)
        return {"function": function, "records": records, "next_seq": next_seq}
