"""What the benchmarks read from ``/proc``: CPU time, process trees, memory.

Shared by ``bench_invoke.py``, ``bench_density.py`` and ``bench_coldstart.py``
so each measures the same way. Every reader returns zero (or just the pid) for
a process that is gone rather than raising: a bench samples live trees.
"""

from __future__ import annotations

import os

CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of one process (all its threads), in seconds; 0 if gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # fields 14 and 15 of stat(5)


def cpu_ns(pid: int) -> int:
    """CPU time of ``pid``'s live threads in nanoseconds (``/proc/PID/task/*/schedstat``).

    ``cpu_seconds`` counts in clock ticks (10 ms): over a few thousand requests
    that is a 3 µs step per request. The scheduler's own account is exact, but a
    thread that exited during the window takes its time with it, so compare
    windows in which the process's threads live throughout (trio keeps its
    worker threads ~10 s after their last job). 0 if the process is gone.
    """
    total = 0
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat", "rb") as f:
                total += int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            continue  # the thread exited between the listing and the read
    return total


def syscalls_and_wakeups(pid: int) -> tuple[int, int]:
    """Read and write system calls of ``pid`` (all threads, ``/proc/PID/io``), and
    the times its main thread slept and was woken (voluntary context switches).

    Counts, not times: they do not swell when a loaded machine makes every
    call slower, so they show what a change does to the work per request.
    (0, 0) if the process is gone.
    """
    try:
        with open(f"/proc/{pid}/io", "rb") as f:
            io = dict(line.split(b":") for line in f.read().splitlines())
        with open(f"/proc/{pid}/status", "rb") as f:
            status = dict(line.split(b":", 1) for line in f.read().splitlines())
    except (OSError, ValueError):
        return 0, 0
    return int(io[b"syscr"]) + int(io[b"syscw"]), int(status[b"voluntary_ctxt_switches"])


def descendants(pid: int) -> list[int]:
    """``pid`` and every process below it (via /proc/PID/task/*/children)."""
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo.extend(int(c) for c in f.read().split())
        except OSError:
            continue
    return found


def _kb(path: str, field: str) -> int:
    """The kB value of the ``field:`` line of a /proc file; 0 if gone or absent."""
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(field):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def pss_kb(pid: int) -> int:
    """Proportional set size: shared pages split between the processes mapping them."""
    return _kb(f"/proc/{pid}/smaps_rollup", "Pss:")


def rss_kb(pid: int) -> int:
    """Resident size: a zygote's own cost (its PSS is split with every instance)."""
    return _kb(f"/proc/{pid}/status", "VmRSS:")


def minflt(pid: int) -> int:
    """Minor page faults of ``pid`` so far (``/proc/PID/stat`` field 10); 0 if gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return int(f.read().rsplit(b")", 1)[1].split()[7])
    except (OSError, ValueError, IndexError):
        return 0
