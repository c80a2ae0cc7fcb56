"""The request story's per-request records, built only as far as they are read.

Every request leaves two records in its function's log ring (admitted,
answered), but only ``log.access_rate`` a second reach the journal and the
ring is read only by ``huselet ctl logs``. Building a dict of rounded
milliseconds per record was ~10 % of the daemon's CPU per request (issue 12);
these fixed-slot objects hold the raw values and become the same fields
(a read-only :class:`~collections.abc.Mapping`) only when the log or a
reader asks for them.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import ItemsView, Iterator, Mapping
from typing import Any


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 3)


class _Record(Mapping[str, Any]):
    """Fields computed on demand from slots; ``get`` of one key without the dict."""

    __slots__ = ()
    function: str  # slots of the subclasses
    request_id: str

    def get(self, key: str, default: Any = None) -> Any:
        # The ring asks every record for these two: no dict for them.
        if key == "function":
            return self.function
        if key == "request_id":
            return self.request_id
        return self.fields().get(key, default)

    @abstractmethod
    def fields(self) -> dict[str, Any]:
        """Every field as the log and ``ctl logs`` show it (built on each call)."""

    def __getitem__(self, key: str) -> Any:
        return self.fields()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.fields())

    def __len__(self) -> int:
        return len(self.fields())

    def items(self) -> ItemsView[str, Any]:
        return self.fields().items()  # one dict, not one per key


class AdmittedRecord(_Record):
    """``request admitted``: the function, the request, the queue it joined."""

    __slots__ = ("function", "queued", "request_id", "trace_id")

    def __init__(self, function: str, request_id: str, queued: int, trace_id: str | None) -> None:
        self.function = function
        self.request_id = request_id
        self.queued = queued
        self.trace_id = trace_id

    def fields(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "function": self.function,
            "request_id": self.request_id,
            "queued": self.queued,
        }
        if self.trace_id is not None:
            out["trace_id"] = self.trace_id
        return out


class AccessRecord(_Record):
    """The access record of one answered (or refused) request: status and timings."""

    __slots__ = (
        "attempts",
        "code",
        "cold",
        "exec_s",
        "function",
        "instance",
        "queue_s",
        "request_id",
        "sampled_out",
        "start_s",
        "status",
        "total_s",
        "trace_id",
    )

    def __init__(
        self,
        function: str,
        request_id: str,
        status: int,
        code: str | None,
        instance: str | None,
        attempts: int,
        trace_id: str | None,
    ) -> None:
        self.function = function
        self.request_id = request_id
        self.status = status
        self.code = code
        self.instance = instance
        self.attempts = attempts
        self.trace_id = trace_id
        self.total_s = self.queue_s = self.start_s = self.exec_s = 0.0
        self.cold = False
        self.sampled_out = 0  # records the sampler skipped before this logged one

    def fields(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "function": self.function,
            "request_id": self.request_id,
            "status": self.status,
            "ms": _ms(self.total_s),
            "queue_ms": _ms(self.queue_s),
            "start_ms": _ms(self.start_s),
            "exec_ms": _ms(self.exec_s),
            "cold_start": self.cold,
            "instance": self.instance,
        }
        if self.code is not None:
            out["error"] = self.code
        if self.attempts > 1:
            out["attempts"] = self.attempts
        if self.trace_id is not None:
            out["trace_id"] = self.trace_id
        if self.sampled_out:
            out["sampled_out"] = self.sampled_out
        return out
