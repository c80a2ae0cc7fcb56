"""Memory stalls reported by the kernel (a PSI trigger): a quiet node reacts at once.

On an idle node the memory loop reads the host's ``MemAvailable`` every idle
tick (:mod:`huselet.health.idle`, 5 s), not every second. What makes memory
run short on an idle node is the host's doing (other tenants), and the kernel
says when that starts to hurt: a pressure-stall trigger on
``/proc/pressure/memory`` ("some 150000 2000000": tasks stalled on memory for
150 ms within 2 s) makes the file signal ``POLLPRI``, with no polling on our
side. :class:`MemoryStalls` arms one and, on each report, notes activity: the
node's loops snap back to their 1 s tick, so the memory loop measures within
a second and keeps measuring every second while stalls go on.

Trio's epoll waits for readability only, and a PSI file is always readable;
the trigger is therefore registered for ``EPOLLPRI`` in an epoll set of its
own, whose descriptor turns readable when the trigger fires. Where PSI is
missing (an old kernel, ``psi=0``, no permission) the loop says so and the
memory loop's idle tick is the bound.
"""

from __future__ import annotations

import os
import select
from collections.abc import Callable

import trio

from huselet.health.counters import HealthCounter
from huselet.health.supervisor import HealthState, LoopReport
from huselet.timegrid import note_activity, sleep_on_grid

PSI_MEMORY = "/proc/pressure/memory"
# 150 ms of stall in a 2 s window (a window unprivileged writers may use too).
TRIGGER = b"some 150000 2000000\0"
REARM_S = 1.0  # at most one report per tick: the kernel repeats every window anyway


def open_psi_trigger(path: str = PSI_MEMORY, trigger: bytes = TRIGGER) -> int:
    """A descriptor that signals ``POLLPRI`` when the trigger fires (raises OSError)."""
    fd = os.open(path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        os.write(fd, trigger)
    except OSError:
        os.close(fd)
        raise
    return fd


class MemoryStalls:
    name = "memory_stalls"

    def __init__(self, open_trigger: Callable[[], int] = open_psi_trigger) -> None:
        self.open_trigger = open_trigger
        self.armed = False

    async def run(self, report: LoopReport) -> None:
        try:
            fd = self.open_trigger()
        except OSError as exc:
            report.set(
                HealthState.OK,
                f"no memory stall trigger ({exc.strerror or exc}): "
                "memory is read every tick, every idle tick on a quiet node",
            )
            await trio.sleep_forever()
        watch = select.epoll()
        try:
            watch.register(fd, select.EPOLLPRI)
            self.armed = True
            report.set(HealthState.OK, "armed: the kernel reports memory stalls")
            while True:
                await trio.lowlevel.wait_readable(watch.fileno())
                watch.poll(0)  # takes the event: the trigger signals again next window
                report.counters[HealthCounter.STALLS] += 1
                report.set(HealthState.OK, "armed: the kernel reported a memory stall")
                note_activity()  # the memory loop is back on its 1 s tick
                await sleep_on_grid(REARM_S)
        finally:
            self.armed = False
            watch.close()
            os.close(fd)
