"""Which tasks each event-loop wake-up of a daemon ran: ``huselet`` under a Trio instrument.

    .venv/bin/python bench/wakeup_census.py OUT.json run --config node.toml

Runs ``huselet`` (the arguments after OUT.json) with an instrument that
counts every event-loop wake-up (an I/O wait with a timeout that ended) and
the names of the tasks stepped until the next one, and rewrites OUT.json
every 10 s with the last windows: wake-ups, and per set of task names how
many wake-ups ran exactly that set (a periodic loop off the shared time grid
shows as a set of its own), and per task name the CPU time (``thread_time``)
its steps took (``task_cpu_us``) and what the loop itself took around them
(``loop_cpu_us``: epoll returns, timers, the instrument's own calls): what
each wake-up's work costs, task by task. The instrument itself costs CPU: use
it to count and attribute wake-ups, ``bench_idlecpu.py`` to measure CPU.
"""

from __future__ import annotations

import json
import sys
import time
from collections import Counter
from typing import Any

import trio
from instrumented import run_huselet_with

WINDOW_S = 10.0
KEEP = 30  # windows in the file


class WakeupCensus(trio.abc.Instrument):
    def __init__(self, out: str) -> None:
        self.out = out
        self.since = time.monotonic()
        self.stepped: set[str] = set()
        self.asleep = False
        self.wakes = 0
        self.sets: Counter[str] = Counter()
        self.windows: list[dict[str, Any]] = []
        self.task_ns: Counter[str] = Counter()
        self.awake_ns = 0  # thread CPU from the end of one I/O wait to the start of the next
        self._step_from = 0
        self._woke_at = time.thread_time_ns()

    def before_io_wait(self, timeout: float) -> None:
        self.awake_ns += time.thread_time_ns() - self._woke_at
        if timeout > 0:  # going to sleep: what ran since the last sleep was one wake-up
            if self.stepped:
                self.sets[" + ".join(sorted(self.stepped))] += 1
            self.stepped = set()
            self.asleep = True
        now = time.monotonic()
        if now - self.since >= WINDOW_S:
            window: dict[str, Any] = {"at": time.time(), "s": round(now - self.since, 2)}
            window |= {"wakes": self.wakes, "sets": self.sets.most_common()}
            tasks_ns = sum(self.task_ns.values())
            window["task_cpu_us"] = [(k, v // 1000) for k, v in self.task_ns.most_common()]
            window["loop_cpu_us"] = (self.awake_ns - tasks_ns) // 1000
            self.windows = [*self.windows[-(KEEP - 1) :], window]
            with open(self.out, "w") as f:
                json.dump(self.windows, f, indent=1)
            self.since, self.wakes, self.sets = now, 0, Counter()
            self.task_ns, self.awake_ns = Counter(), 0

    def after_io_wait(self, timeout: float) -> None:
        self._woke_at = time.thread_time_ns()
        if self.asleep:
            self.wakes += 1
            self.asleep = False

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        self.stepped.add(task.name)
        self._step_from = time.thread_time_ns()

    def after_task_step(self, task: trio.lowlevel.Task) -> None:
        self.task_ns[task.name] += time.thread_time_ns() - self._step_from


def main() -> int:
    return run_huselet_with(WakeupCensus)


if __name__ == "__main__":
    sys.exit(main())
