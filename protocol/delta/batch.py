"""Node-side change batching: coalesce per resource, flush by size or delay.

Thousands of state changes per second must not become thousands of frames.
The node's API puts each change here as an already-encoded delta item keyed by
``(kind, name)``; a later change of the same resource replaces the earlier one
(last wins), so a batch holds at most one item per resource. The session asks
:meth:`DeltaBatcher.due_at` when the oldest change must leave and checks
:attr:`nbytes`/:func:`len` against its size bounds after every change.

Bounded: deltas by the number of distinct resources (itself bounded by the
node's ``max_resources``), results by the command result table.
"""

from __future__ import annotations

Key = tuple[str, str]
# (version, encoded item, is_upsert)
PendingDelta = tuple[int, bytes, bool]


class DeltaBatcher:
    """Pending deltas (coalesced) and command results not yet put into a frame."""

    __slots__ = ("_since", "deltas", "nbytes", "results")

    def __init__(self) -> None:
        self.deltas: dict[Key, PendingDelta] = {}
        self.results: list[bytes] = []
        self.nbytes = 0
        self._since: float | None = None

    def __len__(self) -> int:
        return len(self.deltas) + len(self.results)

    def __bool__(self) -> bool:
        return bool(self.deltas) or bool(self.results)

    def put(self, key: Key, version: int, item: bytes, upsert: bool, now: float) -> None:
        old = self.deltas.get(key)
        if old is not None:
            self.nbytes -= len(old[1])
        self.deltas[key] = (version, item, upsert)
        self.nbytes += len(item)
        if self._since is None:
            self._since = now

    def put_result(self, item: bytes, now: float) -> None:
        self.results.append(item)
        self.nbytes += len(item)
        if self._since is None:
            self._since = now

    def due_at(self, max_delay: float) -> float | None:
        """When the oldest pending change has waited ``max_delay``; None if empty."""
        return None if self._since is None else self._since + max_delay

    def take(self) -> tuple[dict[Key, PendingDelta], list[bytes]]:
        """Hand over everything pending and start empty."""
        deltas, results = self.deltas, self.results
        self.deltas, self.results, self.nbytes, self._since = {}, [], 0, None
        return deltas, results
