"""Event-loop work per fork start, counted: tasks spawned and task steps per start.

    .venv/bin/python bench/bench_startsteps.py --count 500 --rounds 3

CPU time per start is noisy on a shared host; how many tasks and task steps
the event loop runs per start is not. The in-process node stack (runtimes,
link server, dispatcher, as the daemon wires them; real zygote, real fork
instances, fully isolated) serves one small function; once its first
instance is idle, ``min_instances`` is raised by ``--count`` and a trio
Instrument counts what the loop does until all are idle (and gc.callbacks the
collector: its time per start, full collections). Also printed: the
loop thread's CPU per start (``time.thread_time``) and task steps per second
with all idle. To compare two trees, run each tree's own venv python on its
own copy of this file (the zygote runs ``python -I``). Needs root.
"""

from __future__ import annotations

import argparse
import gc
import os
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent))
from procstats import minflt, syscalls_and_wakeups

from huselet.dispatch.instance import InstanceState
from huselet.testing.probes import require_sandbox_host, sandbox_settings
from huselet.testing.stack import running_stack, write_package

NOOP = "def handler(event, context):\n    return {}\n"
IDLE_WINDOW_S = 3.0
WAIT_S = 300.0


class LoopCount(trio.abc.Instrument):
    """Tasks spawned, task steps and garbage collections (their time) while ``on``."""

    def __init__(self) -> None:
        self.on = False
        self.spawned = 0
        self.steps = 0
        self.collections = [0, 0, 0]  # per generation
        self.gc_s = 0.0
        self._gc_at = 0.0

    def gc_event(self, phase: str, info: dict[str, int]) -> None:
        """A ``gc.callbacks`` hook: counts collections and the time they take."""
        if not self.on:
            return
        if phase == "start":
            self._gc_at = time.perf_counter()
        else:
            self.collections[info["generation"]] += 1
            self.gc_s += time.perf_counter() - self._gc_at

    def task_spawned(self, task: trio.lowlevel.Task) -> None:
        if self.on:
            self.spawned += 1

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        if self.on:
            self.steps += 1


async def one_round(count: int) -> dict[str, float]:
    root = Path(tempfile.mkdtemp(prefix="steps", dir="/tmp"))  # short: socket paths
    try:
        pkg = write_package(root, "f", NOOP)
        spec: dict[str, object] = {"name": "f", "package": str(pkg), "handler": "main:handler"}
        spec |= {"runtime": "fork", "min_instances": 1, "max_instances": count + 1}
        loop = LoopCount()
        trio.lowlevel.add_instrument(loop)
        gc.callbacks.append(loop.gc_event)
        try:
            async with running_stack(root, [spec], {"fork": sandbox_settings(root)}) as stack:
                pool = stack.pool("f")

                def idle() -> int:
                    states = [r.state for r in pool.instances.values()]
                    return states.count(InstanceState.IDLE)

                with trio.fail_after(WAIT_S):
                    while idle() < 1:
                        await trio.sleep(0.05)
                    zygote = zygote_pid(stack)
                    z_flt, z_calls = minflt(zygote), syscalls_and_wakeups(zygote)[0]
                    d_calls = syscalls_and_wakeups(os.getpid())[0]
                    pool.settings = replace(pool.settings, min_instances=count + 1)
                    loop.on = True
                    wall, cpu = time.monotonic(), time.thread_time()
                    pool.ensure_capacity()
                    while idle() < count + 1:
                        await trio.sleep(0.01)
                    cpu, wall = time.thread_time() - cpu, time.monotonic() - wall
                spawned, steps = loop.spawned, loop.steps
                d_calls = syscalls_and_wakeups(os.getpid())[0] - d_calls
                z_flt = minflt(zygote) - z_flt
                z_calls = syscalls_and_wakeups(zygote)[0] - z_calls
                pids = [r.handle.pid for r in pool.instances.values() if r.handle]
                i_flt = sum(minflt(p) for p in pids) / max(1, len(pids))
                gc_s, full = loop.gc_s, loop.collections[2]
                await trio.sleep(IDLE_WINDOW_S)
                idle_steps = loop.steps - steps
                loop.on = False
        finally:
            trio.lowlevel.remove_instrument(loop)
            gc.callbacks.remove(loop.gc_event)
        return {
            "start_s": wall,
            "loop_cpu_ms": cpu / count * 1000,
            "tasks": spawned / count,
            "steps": steps / count,
            "idle_steps_s": idle_steps / IDLE_WINDOW_S,
            "gc_ms": gc_s / count * 1000,
            # Counts (load-independent): page faults and read/write-class system
            # calls per start of the zygote and the daemon, an instance's faults.
            "zygote_minflt": z_flt / count,
            "instance_minflt": i_flt,
            "zygote_rw_calls": z_calls / count,
            "daemon_rw_calls": d_calls / count,
            "gc2_runs": float(full),
        }
    finally:
        shutil.rmtree(root, ignore_errors=True)


def zygote_pid(stack: Any) -> int:
    """The fork runtime's one zygote (of the one function served)."""
    (slot,) = stack.runtimes["fork"]._slots.values()
    assert slot.process is not None and slot.process.pid is not None
    return int(slot.process.pid)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=500, help="instances started at once")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    require_sandbox_host()
    rows = []
    for n in range(args.rounds):
        row = trio.run(one_round, args.count)
        rows.append(row)
        print(f"round {n + 1}: " + "  ".join(f"{k} {v:.2f}" for k, v in row.items()), flush=True)
    med = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
    print(
        f"{args.count} starts, median of {args.rounds}: {med['tasks']:.2f} tasks and "
        f"{med['steps']:.1f} task steps per start, loop CPU {med['loop_cpu_ms']:.2f} ms per "
        f"start, {med['idle_steps_s']:.0f} task steps/s with all idle, "
        f"all idle in {med['start_s']:.2f} s; collector {med['gc_ms'] * 1000:.0f} us per "
        f"start ({med['gc2_runs']:.0f} full collections)"
    )
    print(
        f"per start: zygote {med['zygote_minflt']:.1f} page faults and "
        f"{med['zygote_rw_calls']:.1f} read/write calls, daemon {med['daemon_rw_calls']:.1f} "
        f"read/write calls; an idle instance faulted {med['instance_minflt']:.0f} pages"
    )


if __name__ == "__main__":
    main()
