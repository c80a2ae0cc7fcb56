"""Long event-loop passes of a daemon, and the tasks in them: ``huselet`` under a Trio instrument.

    .venv/bin/python bench/loop_steps.py OUT.json run --config node.toml

Runs ``huselet`` (the arguments after OUT.json) with :class:`LongSteps`, which
records every *pass* of the event loop (from the end of one I/O wait to the
start of the next: what a request arriving meanwhile waits behind) that took
longer than :data:`THRESHOLD_S`, with its start (``time.monotonic``, the same
clock in every process, so a client can line its slow samples up with it),
its length, and per task name the steps it ran and their time, plus every
single task step over the threshold. ``bench_auth --steps`` uses it to say
what the quiet tenant's slowest requests waited behind. New records are
appended to OUT (JSON lines) every :data:`FLUSH_S` (after the pass is timed,
so a write is never counted as a pass) and when the run ends. Bench only:
never raises into the loop (a failed write is dropped), and costs two clock
reads per step.
"""

from __future__ import annotations

import bisect
import gc
import json
import sys
import time
from collections import Counter
from typing import Any

import trio
from instrumented import run_huselet_with

THRESHOLD_S = 0.0003
# A step at least this long is labelled with the function its HTTP connection last
# invoked (quiet, noisy: whose request it was), read from the task's frames.
LABEL_S = 0.0001
FLUSH_S = 2.0
KEEP = 200_000  # records kept (a bound: the bench runs minutes)


class LongSteps(trio.abc.Instrument):
    def __init__(self, out: str) -> None:
        self.out = out
        # ["p", start, seconds, {task: [steps, seconds]}] and ["s", start, seconds, task]
        self.pending: list[list[Any]] = []
        self.kept = 0
        with open(out, "w"):
            pass
        self._pass_from = time.monotonic()
        self._tasks: dict[str, list[float]] = {}
        self._step_from = 0.0
        self._flushed = self._pass_from
        self._last: dict[int, str] = {}  # id(connection) -> the function it last invoked
        self._gc_from = 0.0
        gc.callbacks.append(self.gc_callback)  # collections: recorded as steps named gcN

    def after_io_wait(self, timeout: float) -> None:
        self._pass_from = time.monotonic()
        self._tasks = {}

    def before_io_wait(self, timeout: float) -> None:
        now = time.monotonic()
        took = now - self._pass_from
        if took > THRESHOLD_S and self.kept < KEEP:
            tasks = {k: [int(v[0]), round(v[1], 6)] for k, v in self._tasks.items()}
            self.pending.append(["p", self._pass_from, round(took, 6), tasks])
            self.kept += 1
        if now - self._flushed > FLUSH_S:
            self._flushed = now
            self.flush()

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        self._step_from = time.monotonic()

    def after_task_step(self, task: trio.lowlevel.Task) -> None:
        took = time.monotonic() - self._step_from
        name = task.name
        if took > LABEL_S:
            name = f"{name}[{_label(task, self._last)}]"
        row = self._tasks.get(name)
        if row is None:
            row = self._tasks[name] = [0, 0.0]
        row[0] += 1
        row[1] += took
        if took > THRESHOLD_S and self.kept < KEEP:
            self.pending.append(["s", self._step_from, round(took, 6), name])
            self.kept += 1

    def gc_callback(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._gc_from = time.monotonic()
            return
        took = time.monotonic() - self._gc_from
        if took > THRESHOLD_S and self.kept < KEEP:
            self.pending.append(["s", self._gc_from, round(took, 6), f"gc{info['generation']}"])
            self.kept += 1

    def after_run(self) -> None:
        gc.callbacks.remove(self.gc_callback)
        self.flush()

    def flush(self) -> None:
        pending, self.pending = self.pending, []
        try:
            with open(self.out, "a") as f:
                f.writelines(json.dumps(row) + "\n" for row in pending)
        except OSError:
            pass  # bench only: a lost record must not break the daemon


def load(path: str) -> dict[str, Any]:
    """The records in ``path`` (wait :data:`FLUSH_S` and wake the daemon first for all)."""
    passes: list[list[Any]] = []
    steps: list[list[Any]] = []
    with open(path) as f:
        for line in f:
            row = json.loads(line)
            (passes if row[0] == "p" else steps).append(row[1:])
    return {"passes": passes, "steps": steps}


def blame(
    record: dict[str, Any], samples: list[tuple[float, float]], *, top: int = 6
) -> dict[str, Any]:
    """What the slow ``samples`` ((start, ms) in ``time.monotonic``) overlapped in ``record``.

    Per sample, the long passes that ran while it was outstanding; summed over
    the samples: how many had one, their total length, and which task names
    took the most of it.
    """
    passes = sorted(record["passes"])
    starts = [p[0] for p in passes]
    hit = 0
    overlap_ms = 0.0
    by_task: Counter[str] = Counter()
    by_task_steps: Counter[str] = Counter()
    for t0, ms in samples:
        t1 = t0 + ms / 1000
        i = max(0, bisect.bisect_left(starts, t0 - 0.05))
        found = False
        while i < len(passes) and passes[i][0] < t1:
            start, took, tasks = passes[i]
            if start + took > t0:
                found = True
                overlap_ms += took * 1000
                for name, (steps, secs) in tasks.items():
                    by_task[_short(name)] += secs * 1000
                    by_task_steps[_short(name)] += steps
            i += 1
        hit += found
    return {
        "samples": len(samples),
        "with_long_pass": hit,
        "long_pass_ms": round(overlap_ms, 2),
        "by_task_ms": [(k, round(v, 2)) for k, v in by_task.most_common(top)],
        "by_task_steps": [(k, by_task_steps[k]) for k, _ in by_task.most_common(top)],
    }


def window_stats(record: dict[str, Any], t0: float, t1: float, *, top: int = 6) -> dict[str, Any]:
    """Long passes and steps in [t0, t1): count, total and max ms, the tasks that took most."""
    passes = [p for p in record["passes"] if t0 <= p[0] < t1]
    steps = [s for s in record["steps"] if t0 <= s[0] < t1]
    by_task: Counter[str] = Counter()
    for s in steps:
        by_task[_short(s[2])] += s[1] * 1000
    return {
        "long_passes": len(passes),
        "long_pass_ms": round(sum(p[1] for p in passes) * 1000, 1),
        "max_pass_ms": round(max((p[1] for p in passes), default=0) * 1000, 2),
        "long_steps": len(steps),
        "max_step_ms": round(max((s[1] for s in steps), default=0) * 1000, 2),
        "long_steps_by_task_ms": [(k, round(v, 1)) for k, v in by_task.most_common(top)],
    }


def _label(task: trio.lowlevel.Task, last: dict[int, str]) -> str:
    """The function the task's HTTP connection last invoked ("-" when it has none), and
    where the task now waits (the innermost huselet function of its await chain)."""
    coro: Any = task.coro
    label = "-"
    where = "-"
    for _ in range(50):
        frame = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None)
        if frame is None:
            break
        if "huselet" in frame.f_code.co_filename:
            where = frame.f_code.co_name
        conn = frame.f_locals.get("self")
        if type(conn).__name__ == "Connection":
            request = getattr(conn, "_request", None)
            if request is None:
                label = last.get(id(conn), "idle")
            else:
                if len(last) > 10_000:
                    last.clear()
                target = request.target.rsplit(b"/", 1)[-1]
                label = last[id(conn)] = target.decode("ascii", "replace")
        coro = getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None)
    return f"{label}>{where}"


def _short(name: str) -> str:
    # Task names are qualified function names, some with an argument repr: keep the function
    # (and the label after_task_step added in brackets).
    base, _, label = name.partition("[")
    base = base.split(" ")[0].rsplit(".", 1)[-1] if "<" not in base else base
    return (f"{base}[{label}" if label else base)[:70]


def main() -> int:
    return run_huselet_with(LongSteps)


if __name__ == "__main__":
    sys.exit(main())
