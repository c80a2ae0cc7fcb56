"""Telling a starved host from a hung daemon: how long threads waited for a CPU.

``bench_faults`` counts a request *hung* when no reply came within its
deadline plus a margin — a promise the daemon breaks. But on an overloaded
host (``stress-ng``, other jobs) the daemon's event loop, or the load
generator, can be runnable and still wait seconds for a CPU: then the
missing reply is the host's doing. Linux reports that wait per thread
(``/proc/PID/task/TID/schedstat``, second field: nanoseconds spent runnable
on a run queue). A sampler thread records the daemon's loop thread and the
load generator's thread every :data:`INTERVAL_S`; a hung request is put down
to the host when, during its life, either of them alone waited at least the
margin — the slack the load gives beyond the deadline was taken by the
scheduler (the larger of the two, not their sum: they may wait at the same
time). A daemon that is stopped, blocked or simply never answers does not
wait on a run queue, so its requests stay counted as hung.

Measured while finding out why a crash-loop run under ``stress-ng --cpu 6``
(beside other jobs) showed 100+ "hung" requests: the daemon's loop thread was
on a CPU about 20 ms and waited 300-500 ms in every ~400 ms sampled, and the
hung requests had been read by the daemon 1-3 s after the client sent them.
"""

from __future__ import annotations

import bisect
import os
import threading
import time
from collections.abc import Iterable
from typing import Protocol

INTERVAL_S = 0.05


class Timed(Protocol):
    """An outcome of the load: when it was sent and when it ended (monotonic)."""

    @property
    def sent_at(self) -> float: ...

    @property
    def finished_at(self) -> float: ...


def runqueue_wait_s(pid: int, tid: int | None = None) -> float:
    """Seconds thread ``tid`` of ``pid`` (default: its main thread) spent runnable
    but waiting for a CPU; 0 if gone or when the kernel keeps no schedstat."""
    try:
        with open(f"/proc/{pid}/task/{tid or pid}/schedstat") as f:
            return int(f.read().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return 0.0


class CpuWait:
    """Samples the run-queue wait of a daemon's loop thread and of one thread here.

    Use as a context manager around a load; then :meth:`waited_s` tells how
    long either waited between two monotonic times (interpolated samples).
    """

    def __init__(self, daemon_pid: int, client: threading.Thread, interval_s: float = INTERVAL_S):
        self.daemon_pid = daemon_pid
        self.client = client  # the load generator's thread (started)
        self.interval_s = interval_s
        self._times: list[float] = []
        self._waits: list[tuple[float, float]] = []  # (daemon loop, client), cumulative
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cpu wait", daemon=True)

    def _sample(self) -> None:
        client = runqueue_wait_s(os.getpid(), self.client.native_id)
        self._waits.append((runqueue_wait_s(self.daemon_pid), client))
        self._times.append(time.monotonic())

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sample()

    def __enter__(self) -> CpuWait:
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self._sample()

    def _at(self, t: float, which: int) -> float:
        times, waits = self._times, self._waits
        i = bisect.bisect_left(times, t)
        if i <= 0:
            return waits[0][which]
        if i >= len(times):
            return waits[-1][which]
        t0, t1 = times[i - 1], times[i]
        share = (t - t0) / (t1 - t0) if t1 > t0 else 1.0
        return waits[i - 1][which] + share * (waits[i][which] - waits[i - 1][which])

    def waited_s(self, start: float, end: float) -> float:
        """Seconds the daemon's loop or the load (the longer) waited for a CPU in
        ``[start, end]``."""
        if not self._times:
            return 0.0
        return max(max(0.0, self._at(end, k) - self._at(start, k)) for k in (0, 1))

    def starved(self, hung: Iterable[Timed], margin_s: float) -> int:
        """How many of ``hung`` lost at least ``margin_s`` to the scheduler."""
        return sum(1 for o in hung if self.waited_s(o.sent_at, o.finished_at) >= margin_s)

    def share(self, start: float, end: float) -> float:
        """The share of ``[start, end]`` the daemon's loop (or the load) spent waiting."""
        return self.waited_s(start, end) / (end - start) if end > start else 0.0
