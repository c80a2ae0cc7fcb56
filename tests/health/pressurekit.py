"""Fakes the pressure-loop tests drive: scripted samples, a dispatcher and an ingress
that record what the loops asked of them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

from huselet.health.pressure import MemorySample

T = TypeVar("T")


class Script(Generic[T]):
    """Returns the scripted samples one per call (the last one forever)."""

    def __init__(self, samples: list[T]) -> None:
        self.samples = samples

    def next(self) -> T:
        return self.samples.pop(0) if len(self.samples) > 1 else self.samples[0]


class FakeDispatcher:
    def __init__(self, idle: int = 0) -> None:
        self.holds: list[str | None] = []
        self.reaps: list[str] = []
        self.idle = idle
        self.pid_listeners: list[object] = []

    def hold_starts(self, reason: str | None) -> None:
        self.holds.append(reason)

    def reap_idle(self, reason: str) -> int:
        self.reaps.append(reason)
        reaped, self.idle = self.idle, 0
        return reaped

    def watch_pids(self, listener: object) -> None:
        self.pid_listeners.append(listener)


class ScriptedMemory:
    """A memory source returning what ``measure`` says (swap it to change the script)."""

    def __init__(self, measure: Callable[[], MemorySample]) -> None:
        self.measure = measure

    async def sample(self) -> MemorySample:
        return self.measure()


class FakeIngress:
    def __init__(self) -> None:
        self.refusals: list[str | None] = []

    def refuse_connections(self, reason: str | None) -> None:
        self.refusals.append(reason)
