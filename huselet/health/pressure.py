"""Resource-pressure loops: disk, memory and file descriptors.

Each loop measures one resource every interval, feeds the number to a
:class:`Hysteresis` (enter at one threshold, leave only past a second one on
the healthy side, so a node hovering at the limit does not flap) and heals on
the transitions:

- :class:`DiskPressure` — free space of the state dir's file system (measured
  on the loop's thread on a local file system, else in a worker thread). Enter:
  the cache refuses new images (:class:`cache.store.LowDiskSpace`, "refusing
  to install image …: state dir /x has 3.0% free (needs 10%)") and evicts
  every image no instance holds; installed images keep serving. Leave: new
  images are accepted again.
- :class:`MemoryPressure` — the instances' memory (PSS, else RSS) against the
  node's budget, and the host's ``MemAvailable``. Enter: the dispatcher holds
  new instance starts (a request for a function without a live instance gets
  503 naming the reason; warm instances keep serving) and reaps idle ones —
  again every interval while usage stays at or above the enter threshold.
  Leave: starts resume.
- :class:`~huselet.health.fdpressure.FdPressure` — the daemon's open descriptors against
  ``RLIMIT_NOFILE``. Enter: the ingress answers every new connection 503 at
  once, and idle instances (each holds a link socket and pipes) are reaped.
  Leave: connections are served again.

Measuring (``measure_*``, blocking, run in a worker thread when it reads many
files) is kept apart from deciding (:class:`Hysteresis`, pure), so the
decisions are tested with plain numbers. Every healing action goes through
:meth:`LoopReport.action` (a log line, the ``actions`` counter and
``last_action`` in ``huselet ctl health``); each loop also counts ``entered``,
``left`` and what it freed.
"""

from __future__ import annotations

import enum
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import trio

from huselet.config.health import HealthSettings
from huselet.health.counters import HealthCounter
from huselet.health.localfs import on_local_fs
from huselet.health.supervisor import HealthLoop, HealthState, LoopReport
from huselet.timegrid import note_activity, sleep_on_grid

if TYPE_CHECKING:
    from huselet.dispatch.livepids import PidListener

MiB = 1 << 20
DEFAULT_BUDGET_SHARE = 0.9  # memory_budget_mb = 0: this share of the host's RAM
# Low MemAvailable is left once it is this many times the minimum again.
AVAILABLE_LEAVE_FACTOR = 1.25
# The memory loop's period while new instances wait to be measured: each tick
# reads a batch bounded by memsample.READ_BUDGET_S (20 ms) in a worker thread,
# so reading takes at most a tenth of a core while a burst of starts competes
# for the CPU (at 10 Hz the reads slowed a 2,000-instance burst down).
BACKLOG_PERIOD_S = 0.2


# --- deciding ----------------------------------------------------------------------------


class Change(enum.Enum):
    ENTER = "enter"
    LEAVE = "leave"


class Hysteresis:
    """A two-threshold switch over one measured value.

    With ``enter > leave`` high values are bad (memory in use): it becomes
    active when the value reaches ``enter`` and inactive only once the value
    is below ``leave``. With ``enter < leave`` low values are bad (free disk):
    active at or below ``enter``, inactive only above ``leave``. In between,
    it keeps whatever state it had.
    """

    def __init__(self, enter: float, leave: float) -> None:
        if enter == leave:
            raise ValueError(f"enter and leave thresholds must differ, both are {enter}")
        self.enter = enter
        self.leave = leave
        self.high_is_bad = enter > leave
        self.active = False

    def reached(self, value: float) -> bool:
        """Is ``value`` at or beyond the enter threshold?"""
        return value >= self.enter if self.high_is_bad else value <= self.enter

    def cleared(self, value: float) -> bool:
        """Is ``value`` strictly past the leave threshold, on the healthy side?"""
        return value < self.leave if self.high_is_bad else value > self.leave

    def update(self, value: float) -> Change | None:
        """Feed one measurement; the transition it causes, if any."""
        if self.active and self.cleared(value):
            self.active = False
            return Change.LEAVE
        if not self.active and self.reached(value):
            self.active = True
            return Change.ENTER
        return None


# --- measuring (blocking; Linux /proc) -----------------------------------------------------


@dataclass(frozen=True)
class DiskSample:
    free_bytes: int  # available to unprivileged writers (f_bavail)
    total_bytes: int

    @property
    def free_percent(self) -> float:
        return 100.0 * self.free_bytes / self.total_bytes if self.total_bytes else 100.0


def measure_disk(path: Path) -> DiskSample:
    st = os.statvfs(path)
    return DiskSample(st.f_bavail * st.f_frsize, st.f_blocks * st.f_frsize)


def process_memory_bytes(pid: int) -> int | None:
    """Proportional set size of ``pid`` (shared pages split among sharers), else RSS.

    ``None`` when the process is gone or unreadable.
    """
    for path, key in ((f"/proc/{pid}/smaps_rollup", "Pss:"), (f"/proc/{pid}/status", "VmRSS:")):
        try:
            with open(path) as f:
                for line in f:
                    if line.startswith(key):
                        return int(line.split()[1]) * 1024
        except (OSError, ValueError, IndexError):
            continue
    return None


_meminfo_fd: int | None = None
_meminfo_lock = threading.Lock()


def _read_meminfo() -> bytes:
    # One pread on a descriptor kept open: the memory loop reads this every second,
    # and open/fstat/ioctl/lseek/read/read/close was seven syscalls a tick.
    global _meminfo_fd
    with _meminfo_lock:
        if _meminfo_fd is None:
            _meminfo_fd = os.open("/proc/meminfo", os.O_RDONLY | os.O_CLOEXEC)
        fd = _meminfo_fd
    return os.pread(fd, 65536, 0)


def host_memory() -> tuple[int, int]:
    """(MemTotal, MemAvailable) of the host in bytes."""
    values: dict[bytes, int] = {}
    for line in _read_meminfo().splitlines():
        name, _, rest = line.partition(b":")
        if name in (b"MemTotal", b"MemAvailable"):
            values[name] = int(rest.split()[0]) * 1024
    return values[b"MemTotal"], values.get(b"MemAvailable", values[b"MemTotal"])


@dataclass(frozen=True)
class MemorySample:
    used_bytes: int  # summed over the instances
    instances: int  # how many of them could be measured
    available_bytes: int  # host MemAvailable
    pending: int = 0  # new instances not measured yet (counted at the mean)


def measure_memory(pids: Sequence[int]) -> MemorySample:
    used = counted = 0
    for pid in pids:
        size = process_memory_bytes(pid)
        if size is not None:
            used += size
            counted += 1
    return MemorySample(used, counted, host_memory()[1])


# --- what the loops act on ----------------------------------------------------------------


class ImageInstalls(Protocol):
    """The package cache (:class:`~huselet.code.codecache.CodeCache` or an ImageStore)."""

    def refuse_installs(self, reason: str | None) -> None: ...

    def evict_unused(self) -> Sequence[object]: ...


class InstanceControl(Protocol):
    """The node's dispatcher."""

    def hold_starts(self, reason: str | None) -> None: ...

    def reap_idle(self, reason: str) -> int: ...

    def watch_pids(self, listener: PidListener) -> None: ...


class MemorySource(Protocol):
    """Where the memory loop's numbers come from (:mod:`huselet.health.memsample`)."""

    async def sample(self) -> MemorySample: ...


class ConnectionGate(Protocol):
    """The HTTP ingress."""

    def refuse_connections(self, reason: str | None) -> None: ...


def pct(value: float) -> str:
    """A percentage as the loops write it in reports and messages: one decimal."""
    return f"{value:.1f}%"


# --- the loops ---------------------------------------------------------------------------------


class DiskPressure:
    name = "disk"

    def __init__(
        self,
        state_dir: Path,
        cache: ImageInstalls,
        *,
        interval_s: float,
        enter_free_percent: float,
        leave_free_percent: float,
        measure: Callable[[Path], DiskSample] = measure_disk,
    ) -> None:
        self.state_dir = state_dir
        self.cache = cache
        self.interval_s = interval_s
        self.gate = Hysteresis(enter_free_percent, leave_free_percent)
        self.measure = measure
        self.last: DiskSample | None = None
        # Measured on the loop's thread (no worker-thread trip, two wake-ups fewer
        # each interval) once the state dir is known to be on a local file system.
        self.inline: bool | None = None
        self._on_local_fs = on_local_fs

    async def run(self, report: LoopReport) -> None:
        while True:
            await self.check(report)
            if self.gate.active:
                note_activity()  # healing: the node keeps its 1 s tick
            await sleep_on_grid(self.interval_s, stretch=True)

    async def check(self, report: LoopReport) -> None:
        """One measurement and what follows from it."""
        try:
            if self.inline is None:
                self.inline = await trio.to_thread.run_sync(self._on_local_fs, self.state_dir)
            if self.inline:
                sample = self.measure(self.state_dir)
            else:  # statvfs can block for long on a network file system
                sample = await trio.to_thread.run_sync(self.measure, self.state_dir)
        except OSError as exc:
            report.counters[HealthCounter.MEASURE_ERRORS] += 1
            report.set(
                HealthState.DEGRADED,
                f"cannot measure free space of state dir {self.state_dir}: {exc.strerror or exc}",
            )
            return
        self.last = sample
        report.counters[HealthCounter.SAMPLES] += 1
        free = sample.free_percent
        why = f"state dir {self.state_dir} has {pct(free)} free (needs {self.gate.leave:g}%)"
        change = self.gate.update(free)
        if change is Change.ENTER:
            report.counters[HealthCounter.ENTERED] += 1
            self.cache.refuse_installs(why)
            report.action("refusing new images", free_percent=round(free, 2), reason=why)
            evicted = len(self.cache.evict_unused())
            report.counters[HealthCounter.IMAGES_EVICTED] += evicted
            report.action("evicted unused images", count=evicted, free_percent=round(free, 2))
        elif change is Change.LEAVE:
            report.counters[HealthCounter.LEFT] += 1
            self.cache.refuse_installs(None)
            report.action("accepting new images again", free_percent=round(free, 2))
        elif self.gate.active:
            self.cache.refuse_installs(why)  # the refusal names the current figure
        if self.gate.active:
            report.set(
                HealthState.DEGRADED,
                f"{why}: below {self.gate.enter:g}% free, new images refused and unused ones "
                "evicted until it is back",
            )
        else:
            report.set(
                HealthState.OK,
                f"state dir {self.state_dir} has {pct(free)} free "
                f"({sample.free_bytes // MiB} MiB of {sample.total_bytes // MiB} MiB)",
            )


class MemoryPressure:
    name = "memory"

    def __init__(
        self,
        dispatcher: InstanceControl,
        *,
        interval_s: float,
        budget_bytes: int,
        enter_percent: float,
        leave_percent: float,
        min_available_bytes: int = 0,
        source: MemorySource,
    ) -> None:
        if budget_bytes <= 0:
            raise ValueError(f"memory budget must be positive, got {budget_bytes}")
        self.dispatcher = dispatcher
        self.interval_s = interval_s
        self.budget_bytes = budget_bytes
        self.budget_gate = Hysteresis(enter_percent, leave_percent)
        # MemAvailable of the host (other tenants count too); 0 switches it off.
        self.available_gate = (
            Hysteresis(min_available_bytes, min_available_bytes * AVAILABLE_LEAVE_FACTOR)
            if min_available_bytes > 0
            else None
        )
        self.source = source
        self.active = False
        self.last: MemorySample | None = None

    async def run(self, report: LoopReport) -> None:
        while True:
            await self.check(report)
            # New instances not measured yet (a burst of starts): come back soon for
            # the next time-bounded batch, so thousands are measured in seconds.
            pending = self.last is not None and self.last.pending > 0
            if pending:
                await sleep_on_grid(min(self.interval_s, BACKLOG_PERIOD_S))
                continue
            if self.active:
                note_activity()  # healing: the node keeps its 1 s tick
            # Every idle tick when the node is quiet: nothing it runs changes the
            # instances' memory then; MemAvailable (the host's doing) is read then.
            await sleep_on_grid(self.interval_s, stretch=True)

    def _percent(self, sample: MemorySample) -> float:
        return 100.0 * sample.used_bytes / self.budget_bytes

    def _describe(self, sample: MemorySample) -> str:
        text = (
            f"instances use {sample.used_bytes // MiB} MiB of the node's "
            f"{self.budget_bytes // MiB} MiB budget ({pct(self._percent(sample))})"
        )
        if self.available_gate is not None and self.available_gate.active:
            text += (
                f", the host has {sample.available_bytes // MiB} MiB available "
                f"(minimum {int(self.available_gate.enter) // MiB} MiB)"
            )
        return text

    async def check(self, report: LoopReport) -> None:
        # A bounded slice of the instances, read in a worker thread.
        sample = await self.source.sample()
        self.last = sample
        report.counters[HealthCounter.SAMPLES] += 1
        percent = self._percent(sample)
        self.budget_gate.update(percent)
        if self.available_gate is not None:
            self.available_gate.update(sample.available_bytes)
        active = self.budget_gate.active or (
            self.available_gate is not None and self.available_gate.active
        )
        # Still at the enter side (not just inside the band): reap what became idle.
        severe = self.budget_gate.reached(percent) or (
            self.available_gate is not None and self.available_gate.reached(sample.available_bytes)
        )
        reason = f"memory pressure: {self._describe(sample)}"
        if active and not self.active:
            self.active = True
            report.counters[HealthCounter.ENTERED] += 1
            self.dispatcher.hold_starts(reason)
            report.action("holding instance starts", percent=round(percent, 1), reason=reason)
            self._reap(report, reason, percent)
        elif not active and self.active:
            self.active = False
            report.counters[HealthCounter.LEFT] += 1
            self.dispatcher.hold_starts(None)
            report.action("starting instances again", percent=round(percent, 1))
        elif active and severe:
            self._reap(report, reason, percent, quiet=True)
        if self.active:
            report.set(
                HealthState.DEGRADED,
                f"{self._describe(sample)}: instance starts held and idle instances reaped "
                f"until below {self.budget_gate.leave:g}%",
            )
        else:
            report.set(
                HealthState.OK,
                f"{self._describe(sample)}, {sample.instances} instances; "
                f"host has {sample.available_bytes // MiB} MiB available",
            )

    def _reap(
        self, report: LoopReport, reason: str, percent: float, *, quiet: bool = False
    ) -> None:
        reaped = self.dispatcher.reap_idle(reason)
        report.counters[HealthCounter.INSTANCES_REAPED] += reaped
        if reaped or not quiet:
            report.action("reaped idle instances", count=reaped, percent=round(percent, 1))


def memory_budget_bytes(settings: HealthSettings) -> int:
    """``memory_budget_mb``, or 90 % of the host's RAM when it is 0."""
    if settings.memory_budget_mb:
        return settings.memory_budget_mb * MiB
    return int(host_memory()[0] * DEFAULT_BUDGET_SHARE)


def build_pressure_loops(
    settings: HealthSettings,
    *,
    state_dir: Path,
    dispatcher: InstanceControl,
    cache: ImageInstalls,
    ingress: ConnectionGate,
) -> list[HealthLoop]:
    """The three pressure loops of a daemon, configured from ``[health]``."""
    # Both build on this module.
    from huselet.health.fdpressure import FdPressure
    from huselet.health.memsample import RollingMemorySampler

    sampler = RollingMemorySampler()
    dispatcher.watch_pids(sampler)  # told of each start and end: no walk per tick
    return [
        DiskPressure(
            state_dir,
            cache,
            interval_s=settings.disk_interval_ms / 1000,
            enter_free_percent=settings.disk_enter_free_percent,
            leave_free_percent=settings.disk_leave_free_percent,
        ),
        MemoryPressure(
            dispatcher,
            # A bounded slice of the instances per tick, not all of them.
            source=sampler,
            interval_s=settings.memory_interval_ms / 1000,
            budget_bytes=memory_budget_bytes(settings),
            enter_percent=settings.memory_enter_percent,
            leave_percent=settings.memory_leave_percent,
            min_available_bytes=settings.memory_min_available_mb * MiB,
        ),
        FdPressure(
            ingress,
            dispatcher,
            interval_s=settings.fd_interval_ms / 1000,
            enter_percent=settings.fd_enter_percent,
            leave_percent=settings.fd_leave_percent,
        ),
    ]
