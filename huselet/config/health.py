"""``[health]``: the periods and thresholds of every health loop, from TOML.

Each loop owns one fault class; its knobs live here so an operator tunes them
in one table. Pressure loops take an *enter* and a lower *leave* threshold
(hysteresis): a node hovering at the limit does not flap between states.

Kept out of :mod:`huselet.config` (already the longest module) but parsed by
it: :func:`parse_health` takes the ``[health]`` table validator.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import TYPE_CHECKING

from huselet.errors import ConfigError
from huselet.health.breaker import BreakerSettings

if TYPE_CHECKING:
    from huselet.config.table import ConfigTable


@dataclass(frozen=True)
class HealthSettings:
    # Event loop (lag probe): how often it measures, and which lag is bad.
    lag_period_ms: int = 1000  # reports; stalls in between are seen by a Trio instrument
    lag_degraded_ms: int = 100
    lag_failing_ms: int = 1000
    # Idle instances: pinged after this much silence, replaced when no answer
    # comes within the timeout (a SIGSTOPped or wedged worker).
    heartbeat_interval_ms: int = 2000
    heartbeat_timeout_ms: int = 1000
    # Idle instances the kernel watches (direct children: fork, process): a stop
    # is reported by SIGCHLD and an exit by the pidfd, so they are pinged only
    # this rarely (for a worker wedged without being stopped); 0: never.
    idle_heartbeat_interval_ms: int = 300_000
    # Crash-loop breaker per function.
    breaker_failures: int = 5
    breaker_window_s: int = 30
    breaker_open_ms: int = 1000
    breaker_max_open_ms: int = 60_000
    # Disk: free space on the state dir's file system.
    disk_interval_ms: int = 5000
    disk_enter_free_percent: int = 5  # below: evict cache, refuse new images
    disk_leave_free_percent: int = 10  # above again: back to normal
    # Memory: the node's budget for instances, and the host's available memory.
    memory_interval_ms: int = 1000
    memory_budget_mb: int = 0  # 0: 90 % of the host's RAM
    memory_enter_percent: int = 95  # of the budget: stop starting instances, reap idle ones
    memory_leave_percent: int = 85
    memory_min_available_mb: int = 256  # MemAvailable below this is pressure too
    # Descriptors: the daemon's open files against RLIMIT_NOFILE.
    fd_interval_ms: int = 2000
    fd_enter_percent: int = 85  # refuse new connections, reap idle instances
    fd_leave_percent: int = 70
    # Idle node: once nothing happened for idle_after_ms (no request, no instance
    # started or ended, no loop under pressure), the periodic loops tick every
    # idle_tick_ms instead of every second; the first activity snaps them back.
    idle_tick_ms: int = 5000  # 0: never stretch
    idle_after_ms: int = 10_000

    @property
    def breaker(self) -> BreakerSettings:
        return BreakerSettings(
            failures=self.breaker_failures,
            window_s=float(self.breaker_window_s),
            open_s=self.breaker_open_ms / 1000,
            max_open_s=self.breaker_max_open_ms / 1000,
        )


# Knobs where 0 means something (memory_budget_mb 0: 90 % of RAM;
# idle_heartbeat_interval_ms 0: never ping an idle kernel-watched worker;
# idle_tick_ms 0: an idle node keeps the 1 s tick); every other
# knob must be positive, and a ``*_percent`` one at most 100.
_ZERO_ALLOWED = frozenset(
    {"memory_budget_mb", "memory_min_available_mb", "idle_heartbeat_interval_ms", "idle_tick_ms"}
)


def parse_health(t: ConfigTable) -> HealthSettings:
    d = HealthSettings()
    values: dict[str, int] = {}
    for f in fields(HealthSettings):  # in declaration order: the first bad key is reported
        name, default = f.name, getattr(d, f.name)
        if name in _ZERO_ALLOWED:
            values[name] = t.non_negative_int(name, default=default)
            continue
        value = t.positive_int(name, default=default)
        if name.endswith("_percent") and value > 100:
            raise ConfigError(t.key(name), f"expected a percentage 1..100, got {value}")
        values[name] = value
    settings = HealthSettings(**values)
    t.finish()
    _check_hysteresis(
        t,
        "disk_leave_free_percent",
        "disk_enter_free_percent",
        above=True,
        leave=settings.disk_leave_free_percent,
        enter=settings.disk_enter_free_percent,
    )
    _check_hysteresis(
        t,
        "memory_leave_percent",
        "memory_enter_percent",
        above=False,
        leave=settings.memory_leave_percent,
        enter=settings.memory_enter_percent,
    )
    _check_hysteresis(
        t,
        "fd_leave_percent",
        "fd_enter_percent",
        above=False,
        leave=settings.fd_leave_percent,
        enter=settings.fd_enter_percent,
    )
    if settings.breaker_max_open_ms < settings.breaker_open_ms:
        raise ConfigError(
            t.key("breaker_max_open_ms"),
            f"{settings.breaker_max_open_ms} is below breaker_open_ms {settings.breaker_open_ms}",
        )
    return settings


def _check_hysteresis(
    t: ConfigTable, leave_key: str, enter_key: str, *, above: bool, leave: int, enter: int
) -> None:
    """The leave threshold must lie on the healthy side of the enter threshold."""
    ok = leave > enter if above else leave < enter
    if not ok:
        side = "above" if above else "below"
        raise ConfigError(
            t.key(leave_key),
            f"{leave} must be {side} {enter_key} ({enter}) so the state cannot flap",
        )
