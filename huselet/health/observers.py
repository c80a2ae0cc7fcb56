"""Health loops that report faults mended elsewhere, so ``huselet ctl health`` shows them.

Instance deaths, missed heartbeats and deadline kills are noticed and mended
inside each function's pool, at once (pidfd, heartbeat task, deadline) — a
loop polling for them would only be slower. These loops turn the pools'
counters into one report per fault class: its state, the last healing action
and counters, each sampled every ``period_s`` (1 s: on the grid tick the
other 1 s loops wake on; at 0.5 s they were an idle node's only other wake-up),
every idle tick when the node is quiet (:mod:`huselet.health.idle`) — the
``instances`` loop not at all then: each fault it reports ends an instance,
which is activity and wakes it at once. A breaker not closed or a fault just
mended keeps the node on the 1 s tick.

- ``instances``: dead, stuck and silent instances replaced; requests retried.
- ``crash_loops``: functions whose circuit breaker is open.
- ``scheduler_link``: the link to the central scheduler (fleet mode only).
- ``cache_integrity``: images the scrub found corrupt and quarantined.
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Any, Protocol

import trio

from huselet.dispatch.counters import PoolCounter
from huselet.health.counters import HealthCounter
from huselet.health.supervisor import HealthState, LoopReport
from huselet.timegrid import note_activity, sleep_on_grid

if TYPE_CHECKING:
    from huselet.dispatch.api import PoolsView


class LinkView(Protocol):
    """The fleet link as its health loop reads it."""

    @property
    def state(self) -> str: ...

    @property
    def address(self) -> str | None: ...


class ScrubView(Protocol):
    """The cache scrubber as its health loop reads it."""

    @property
    def passes(self) -> int: ...

    @property
    def last_pass(self) -> dict[str, Any] | None: ...


# Pool counters that mean "an instance was lost and replaced", with how to say it.
INSTANCE_FAULTS = {
    PoolCounter.INSTANCES_LOST: "instance ended unexpectedly",
    PoolCounter.HEARTBEAT_MISSED: "idle instance missed its heartbeat",
    PoolCounter.STOPPED_BUSY: "busy instance found frozen by a signal",
    PoolCounter.DEADLINE_KILLS: "instance killed: its request passed the deadline",
    PoolCounter.RETRIED: "idempotent request retried on a fresh instance",
}
RECENT_S = 10.0  # a fault this recent keeps the loop degraded


class InstanceLiveness:
    name = "instances"

    def __init__(self, dispatcher: PoolsView, *, period_s: float = 1.0) -> None:
        self.dispatcher = dispatcher
        self.period_s = period_s

    def _totals(self) -> dict[str, Counter[PoolCounter]]:
        totals: dict[str, Counter[PoolCounter]] = {}
        for pool in self.dispatcher.pools.values():
            totals[pool.name] = Counter({k: pool.counters[k] for k in INSTANCE_FAULTS})
        return totals

    async def run(self, report: LoopReport) -> None:
        seen = self._totals()
        last_fault_at: float | None = None
        while True:
            # Quiet: not woken at all. An instance lost or replaced is an end (a
            # start) of a pid, which is activity and wakes this loop at once.
            await sleep_on_grid(self.period_s, until_activity=True)
            now = trio.current_time()
            current = self._totals()
            for function, counts in current.items():
                # A replaced pool (reload) starts its counters afresh: no negative deltas.
                delta = counts - seen.get(function, Counter())
                for key, n in delta.items():
                    report.counters[key] += n
                    report.action(f"{function}: {INSTANCE_FAULTS[key]} (x{n})", function=function)
                    last_fault_at = now
            seen = current
            live = sum(len(p.instances) for p in self.dispatcher.pools.values())
            if last_fault_at is not None and now - last_fault_at < RECENT_S:
                note_activity()
                report.set(HealthState.DEGRADED, f"{live} instances; faults mended just now")
            else:
                report.set(HealthState.OK, f"{live} instances")


class CrashLoops:
    name = "crash_loops"

    def __init__(self, dispatcher: PoolsView, *, period_s: float = 1.0) -> None:
        self.dispatcher = dispatcher
        self.period_s = period_s

    async def run(self, report: LoopReport) -> None:
        opened: dict[str, int] = {}
        while True:
            now = trio.current_time()
            failing = []
            for pool in self.dispatcher.pools.values():
                breaker = pool.breaker
                if breaker.opened > opened.get(pool.name, 0):
                    report.counters[HealthCounter.BREAKERS_OPENED] += breaker.opened - opened.get(
                        pool.name, 0
                    )
                    report.action(
                        f"{pool.name}: circuit breaker opened ({breaker.last_reason})",
                        function=pool.name,
                    )
                opened[pool.name] = breaker.opened
                state = breaker.describe(now)["state"]
                if state != "closed":
                    failing.append(f"{pool.name} ({state}: {breaker.last_reason})")
            if failing:
                note_activity()  # a breaker's trial is due soon: keep the 1 s tick
                report.set(HealthState.DEGRADED, "breaker not closed: " + "; ".join(failing))
            else:
                report.set(HealthState.OK, "every breaker closed")
            # Quiet: every idle tick (a start that fails before it has a pid, e.g.
            # a zygote that cannot be built, is no activity of its own).
            await sleep_on_grid(self.period_s, stretch=True)


class SchedulerLinkHealth:
    """The fleet link: degraded while it is not established (the node still serves)."""

    name = "scheduler_link"

    def __init__(self, link: LinkView, *, period_s: float = 1.0, grace_s: float = 5.0) -> None:
        self.link = link
        self.period_s = period_s
        self.grace_s = grace_s

    async def run(self, report: LoopReport) -> None:
        down_since: float | None = None
        was_up = False
        while True:
            now = trio.current_time()
            state = self.link.state
            if state == "established":
                if down_since is not None and was_up:
                    report.counters[HealthCounter.RECONNECTS] += 1
                    report.action("link to the central scheduler re-established")
                down_since, was_up = None, True
                report.set(HealthState.OK, f"established with {self.link.address}")
            else:
                note_activity()  # reconnecting: keep the 1 s tick
                down_since = now if down_since is None else down_since
                if now - down_since >= self.grace_s:
                    report.set(
                        HealthState.DEGRADED,
                        f"{state} for {now - down_since:.0f}s; serving what is deployed",
                    )
            await sleep_on_grid(self.period_s, stretch=True)


class CacheIntegrity:
    """What the scrub found: corrupt images are quarantined and fetched again."""

    name = "cache_integrity"

    def __init__(self, scrubber: ScrubView, *, period_s: float = 1.0) -> None:
        self.scrubber = scrubber
        self.period_s = period_s

    async def run(self, report: LoopReport) -> None:
        passes = 0
        while True:
            if self.scrubber.passes != passes and self.scrubber.last_pass is not None:
                passes = self.scrubber.passes
                last = self.scrubber.last_pass
                bad = last.get("bad") or []
                report.counters[HealthCounter.PASSES] = passes
                if bad:
                    report.counters[HealthCounter.QUARANTINED] += len(bad)
                    report.action(f"quarantined {len(bad)} corrupt images for re-fetch")
                    report.set(HealthState.DEGRADED, f"last pass found {len(bad)} corrupt images")
                else:
                    report.set(HealthState.OK, f"last pass: {last.get('checked', 0)} images ok")
            elif passes == 0:
                report.set(HealthState.OK, "no scrub pass yet")
            await sleep_on_grid(self.period_s, stretch=True)
