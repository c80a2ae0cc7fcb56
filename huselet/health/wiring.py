"""The node's health loops, assembled in one place: what the daemon supervises.

The lag probe and the systemd watchdog (the watchdog pets only while the
probe measures), then the pressure loops (disk, memory, descriptors), the
startup recovery sweep's report, the observers of faults mended elsewhere
(instances, crash loops, cache integrity) and, in fleet mode, the link to the
central scheduler; last, the idle tick (an idle node's loops tick every few
seconds: :mod:`huselet.health.idle`). The daemon runs the supervisor once it is ready.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from huselet.config import Config
from huselet.dispatch.api import PoolsView
from huselet.health.idle import IdleTick
from huselet.health.lag import LagProbe
from huselet.health.memstall import MemoryStalls
from huselet.health.observers import (
    CacheIntegrity,
    CrashLoops,
    InstanceLiveness,
    LinkView,
    SchedulerLinkHealth,
    ScrubView,
)
from huselet.health.pressure import (
    ConnectionGate,
    ImageInstalls,
    InstanceControl,
    build_pressure_loops,
)
from huselet.health.recovery import RecoverySweep
from huselet.health.supervisor import HealthSupervisor
from huselet.health.watchdog import CriticalCheck, WatchdogPetter, watchdog_interval_s
from huselet.notify import SystemdNotifier


class WatchedDispatcher(InstanceControl, PoolsView, Protocol):
    """The node's dispatcher as the health loops use it: starts, reaping, pools."""


@dataclass(frozen=True)
class NodeHealth:
    """The supervisor and the loops the daemon itself talks to."""

    supervisor: HealthSupervisor
    lag_probe: LagProbe
    recovery: RecoverySweep  # swept by the daemon before any component starts


def build_health(
    config: Config,
    notifier: SystemdNotifier,
    *,
    critical: Mapping[str, CriticalCheck],
    dispatcher: WatchedDispatcher,
    cache: ImageInstalls,
    scrubber: ScrubView,
    ingress: ConnectionGate,
    runtimes: Mapping[str, Any],
    fleet: LinkView | None,
) -> NodeHealth:
    """Every health loop of a daemon, configured from ``[health]``."""
    health = config.health
    lag_probe = LagProbe(
        period_s=health.lag_period_ms / 1000,
        degraded_ms=health.lag_degraded_ms,
        failing_ms=health.lag_failing_ms,
    )
    watchdog = WatchdogPetter(notifier, lag_probe, dict(critical), interval_s=watchdog_interval_s())
    supervisor = HealthSupervisor([lag_probe, watchdog])
    for loop in build_pressure_loops(
        health,
        state_dir=config.node.state_dir,
        dispatcher=dispatcher,
        cache=cache,
        ingress=ingress,
    ):
        supervisor.add(loop)
    # Finds what a previous run left (processes, cgroups, sockets, temp files) at start.
    recovery = RecoverySweep(config, runtimes)
    supervisor.add(recovery)
    supervisor.add(InstanceLiveness(dispatcher))
    supervisor.add(CrashLoops(dispatcher))
    supervisor.add(CacheIntegrity(scrubber))
    if fleet is not None:
        supervisor.add(SchedulerLinkHealth(fleet))
    # Lets an idle node's periodic loops (these, the fork runtime's) tick every few seconds.
    idle_tick_s = health.idle_tick_ms / 1000 or None
    supervisor.add(IdleTick(dispatcher, tick_s=idle_tick_s, after_s=health.idle_after_ms / 1000))
    if idle_tick_s is not None:
        # The kernel's memory stall reports wake a quiet node's memory loop at once.
        supervisor.add(MemoryStalls())
    return NodeHealth(supervisor, lag_probe, recovery)
