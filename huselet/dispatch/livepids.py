"""The pids of the node's live instances, kept as instances start and end.

The memory loop needs to know which processes to measure. It used to ask
every second for a list built by walking every pool's every instance — with
2,000 idle instances a fifth of the daemon's idle CPU went into rebuilding a
list that had not changed. Here the set is updated where it changes (an
instance's sandbox started, its teardown finished: O(1) each) and whoever
needs to follow it subscribes once and is told of each change
(:class:`PidListener`), so nothing per tick depends on the number of
instances.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

MAX_LISTENERS = 16  # a bound: a leak of subscriptions fails loudly, not slowly


class PidListener(Protocol):
    """Told (on the event loop's thread, synchronously: keep it O(1)) of each change."""

    def added(self, pid: int) -> None: ...

    def removed(self, pid: int) -> None: ...


class LivePids:
    """A set of pids with change listeners; every operation is O(1) (subscribe: O(n) once).

    Each pid is added with its owner (the instance) and only that owner's
    discard removes it: a process may be reaped, and its pid reused by a new
    instance, before the old instance's teardown gets round to the discard.
    """

    def __init__(self) -> None:
        self._pids: dict[int, object] = {}  # pid -> owner
        self._listeners: list[PidListener] = []

    def __len__(self) -> int:
        return len(self._pids)

    def __contains__(self, pid: object) -> bool:
        return pid in self._pids

    def __iter__(self) -> Iterator[int]:
        return iter(self._pids)

    def add(self, pid: int, owner: object) -> None:
        previous = self._pids.get(pid)
        if previous is owner:
            return
        if previous is not None:  # a reused pid: the old process is gone
            self._tell_removed(pid)
        self._pids[pid] = owner
        for listener in self._listeners:
            listener.added(pid)

    def discard(self, pid: int, owner: object) -> None:
        if self._pids.get(pid) is not owner:
            return  # not there, or already someone else's
        del self._pids[pid]
        self._tell_removed(pid)

    def _tell_removed(self, pid: int) -> None:
        for listener in self._listeners:
            listener.removed(pid)

    def subscribe(self, listener: PidListener) -> None:
        """Tell ``listener`` of every pid live now (as added) and of every change from now on."""
        if listener in self._listeners:
            return
        if len(self._listeners) >= MAX_LISTENERS:
            raise RuntimeError(f"more than {MAX_LISTENERS} pid listeners: a leak?")
        self._listeners.append(listener)
        for pid in self._pids:
            listener.added(pid)
