"""Bounded table of command outcomes: exactly-once effect over at-least-once delivery.

The scheduler re-delivers a command whenever it cannot be sure the node has it
(stream reset, snapshot, failover). The node looks every delivered ``cmd_id``
up here first: a command in progress is ignored, a finished one is answered
with its stored result, and only an unknown one is handed to the daemon.

Bound: ``max_entries`` over running + finished entries. Finished entries are
evicted oldest-first; running ones never are (their result is still owed), so
a scheduler that keeps more than ``max_entries`` commands in progress on one
node is refused with :class:`LimitExceeded`. The guarantee therefore holds
while a re-delivery comes within the last ``max_entries`` finished commands,
which PROTOCOL.md makes a scheduler obligation.
"""

from __future__ import annotations

from collections import OrderedDict

from protocol.delta.errors import LimitExceeded

RUNNING = "running"


class CommandResultTable:
    """``cmd_id → RUNNING | encoded result item``."""

    __slots__ = ("_done", "_running", "evicted", "max_entries")

    def __init__(self, max_entries: int) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be positive")
        self.max_entries = max_entries
        self._running: set[str] = set()
        self._done: OrderedDict[str, bytes] = OrderedDict()
        self.evicted = 0

    def __len__(self) -> int:
        return len(self._running) + len(self._done)

    @property
    def running(self) -> int:
        return len(self._running)

    def is_running(self, cmd_id: str) -> bool:
        return cmd_id in self._running

    def lookup(self, cmd_id: str) -> str | bytes | None:
        """``RUNNING``, the stored encoded result, or None if unknown."""
        if cmd_id in self._running:
            return RUNNING
        return self._done.get(cmd_id)

    def start(self, cmd_id: str) -> None:
        """Record that the daemon is now executing ``cmd_id``."""
        while len(self._running) + len(self._done) >= self.max_entries:
            if not self._done:
                raise LimitExceeded(
                    f"{len(self._running)} commands in progress; the table holds {self.max_entries}"
                )
            self._done.popitem(last=False)
            self.evicted += 1
        self._running.add(cmd_id)

    def finish(self, cmd_id: str, encoded_result: bytes) -> bool:
        """Store the result of a running command; False if it was not running."""
        if cmd_id not in self._running:
            return False
        self._running.discard(cmd_id)
        self._done[cmd_id] = encoded_result
        return True

    def store(self, cmd_id: str, encoded_result: bytes) -> None:
        """Record an outcome decided without running anything (e.g. unsupported kind)."""
        self.start(cmd_id)
        self.finish(cmd_id, encoded_result)
