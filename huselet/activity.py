"""ActivityCount: a count of work in progress that a task can wait to see reach zero.

Drain, retire and shutdown wait for "no request in flight" or "no instance
left". Polling that condition every few milliseconds wakes the loop for
nothing and answers late; this counter wakes its waiters exactly when the
count returns to zero.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import trio


class ActivityCount:
    """How many things are in progress; :meth:`wait_zero` returns once none is."""

    __slots__ = ("_count", "_zero")

    def __init__(self) -> None:
        self._count = 0
        self._zero = trio.Event()
        self._zero.set()

    @property
    def count(self) -> int:
        return self._count

    def __bool__(self) -> bool:
        return self._count > 0

    def enter(self) -> None:
        if self._count == 0:
            self._zero = trio.Event()  # a fresh one: waiters of the last zero have woken
        self._count += 1

    def leave(self) -> None:
        if self._count <= 0:
            raise RuntimeError("ActivityCount.leave() without a matching enter()")
        self._count -= 1
        if self._count == 0:
            self._zero.set()

    @contextmanager
    def hold(self) -> Iterator[None]:
        self.enter()
        try:
            yield
        finally:
            self.leave()

    async def wait_zero(self) -> None:
        # A loop, not one wait: the count may rise again between the set() and
        # this task running.
        while self._count:
            await self._zero.wait()


async def wait_all_zero(counts: list[ActivityCount]) -> None:
    """Return once every count is zero at the same moment."""
    while any(counts):
        for count in counts:
            await count.wait_zero()
