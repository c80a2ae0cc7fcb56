"""bench/starvation.py: run-queue wait tells a starved host from a hung daemon.

Real processes, real scheduler: two busy loops pinned to one CPU must each
wait for it; a SIGSTOPped process is not runnable and waits for nothing (a
stopped daemon's unanswered requests stay "hung", never "starved").
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import wait_until

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
from starvation import CpuWait, runqueue_wait_s

BUSY = [sys.executable, "-c", "while True: pass"]
SCHEDSTAT = Path(f"/proc/{os.getpid()}/task/{os.getpid()}/schedstat")

pytestmark = pytest.mark.skipif(not SCHEDSTAT.exists(), reason="the kernel keeps no schedstat")


@pytest.fixture
def busy_pair() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Two busy loops sharing one CPU (the first this process may use)."""
    cpu = min(os.sched_getaffinity(0))
    procs = [subprocess.Popen(BUSY) for _ in range(2)]
    try:
        for p in procs:
            os.sched_setaffinity(p.pid, {cpu})
        yield procs
    finally:
        for p in procs:
            p.kill()
            p.wait()


def test_processes_sharing_a_cpu_wait_for_it(busy_pair: list[subprocess.Popen[bytes]]) -> None:
    first = busy_pair[0].pid
    start = runqueue_wait_s(first)
    assert wait_until(lambda: runqueue_wait_s(first) - start > 0.05)


def test_a_stopped_process_waits_for_no_cpu(busy_pair: list[subprocess.Popen[bytes]]) -> None:
    stopped = busy_pair[0].pid
    os.kill(stopped, signal.SIGSTOP)
    assert wait_until(lambda: _state(stopped) == "T")
    # The "client" sleeps throughout: it waits for no CPU either.
    done = threading.Event()
    client = threading.Thread(target=done.wait)
    client.start()
    assert wait_until(lambda: _state(os.getpid(), client.native_id) == "S")
    try:
        with CpuWait(stopped, client) as waits:
            # Samples over a span where the other busy loop keeps the CPU busy.
            assert wait_until(lambda: len(waits._times) >= 5)
    finally:
        done.set()
        client.join()
    assert waits.waited_s(waits._times[0], waits._times[-1]) == 0.0


def _state(pid: int, tid: int | None = None) -> str:
    """The scheduler state letter of a thread (default: the main one): R, S, T…"""
    with open(f"/proc/{pid}/task/{tid or pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]
