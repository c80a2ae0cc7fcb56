"""Idle CPU side by side: this checkout's daemon and another's, measured in the same windows.

    .venv/bin/python bench/bench_idlecpu.py --ref /path/to/other/checkout           # 0,500,2000
    .venv/bin/python bench/bench_idlecpu.py --ref ../main --counts 0,1000 --windows 3

Absolute idle CPU on a shared VM moves several-fold with the host's state
(frequency, contention), so a before/after taken minutes apart says little.
Here both daemons (``bench_density``'s configuration: one ``fork`` function
with ``min_instances = max_instances = N``) start together, and once both
have N idle instances their CPU (``procstats.cpu_ns`` via
``bench_density.idle_cpu``) is read over the same windows: 3 s right after
("early"), then ``--windows`` windows of 10 s from 20 s on ("settled"), with
the daemon's wake-ups per second beside each figure: the voluntary context
switches of all its threads (``/proc/PID/task/*/status``), one per sleep that
ended — an event-loop wake-up, or a worker thread's job. The
other checkout's daemon runs from its own tree (``python -m huselet`` with
that tree as working directory); the instances' worker code is this venv's.
Needs root (fork isolation), like bench_density.

The floor, measured in the same windows: bare Trio processes (this venv's
Python and Trio, nothing imported besides) that only sleep in a loop, one per
``--floor-periods`` (1 s: the ref's tick; 5 s: this tree's idle tick). Their
CPU per wake-up is what this VM charges any Trio process for waking up after
such a sleep (an epoll return, a timer, the pages that touches after the host
ran others); each daemon's line then shows its wake-ups times the floor's cost
per wake-up at the nearest period ("floor at its rate") beside its CPU, so what
is left is the daemon's own work per wake-up.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_density import Daemon, idle_cpu

HERE = Path(__file__).resolve().parent.parent

# The floor: a Trio process that only wakes up every PERIOD seconds.
FLOOR = """
import sys, trio
async def main(period):
    while True:
        await trio.sleep(period)
trio.run(main, float(sys.argv[1]))
"""


def wakeups(pid: int) -> dict[str, int]:
    """Voluntary context switches of each live thread of ``pid``."""
    counts = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/status") as f:
                for line in f:
                    if line.startswith("voluntary_ctxt_switches:"):
                        counts[tid] = int(line.split()[1])
        except OSError:
            continue  # the thread exited meanwhile
    return counts


def idle_cpu_and_wakeups(pid: int, seconds: float) -> tuple[float, bool, float]:
    """``idle_cpu`` over the window, and the wake-ups per second in it (of the threads
    alive at its end: a worker thread that exited inside it takes its own along)."""
    before, t0 = wakeups(pid), time.monotonic()
    pct, rough = idle_cpu(pid, seconds)
    after = wakeups(pid)
    woke = sum(n - before.get(tid, 0) for tid, n in after.items())
    return pct, rough, woke / (time.monotonic() - t0)


def start_floors(periods: list[float]) -> dict[float, subprocess.Popen[bytes]]:
    return {p: subprocess.Popen([sys.executable, "-c", FLOOR, str(p)]) for p in periods}


def floor_at(rate: float, floors: dict[float, tuple[float, float]]) -> tuple[float, float]:
    """(ms of CPU per wake-up of the floor whose period is nearest ``1/rate``, that
    times ``rate`` as % of a core); floors: period -> (ms per wake-up, wake-ups/s)."""
    floors = {p: cost for p, cost in floors.items() if cost[1] > 0}  # woke in the window
    if not floors:
        return 0.0, 0.0
    period = min(floors, key=lambda p: abs(p - 1 / rate) if rate > 0 else -p)
    ms = floors[period][0]
    return ms, ms * rate / 10  # ms per wake-up x wake-ups/s = ms/s; /10: % of a core


def run_pair(
    root: Path,
    n: int,
    trees: dict[str, Path],
    windows: int,
    timeout_s: float,
    floor_periods: list[float],
) -> None:
    daemons: dict[str, Daemon] = {}
    # Started first: their own start-up (importing trio) is over by the first window.
    floors = start_floors(floor_periods)
    try:
        for side, tree in trees.items():
            d = Daemon(root / f"n{n}-{side}", n, "fork", max_instances=max(1, n))
            d.log = open(d.home / "daemon.log", "wb")  # noqa: SIM115
            # Its own venv when it has one: zygotes and instances start with `python
            # -I`, so only the interpreter's installed huselet reaches them.
            own = tree / ".venv" / "bin" / "python"
            python = str(own) if own.exists() else sys.executable
            cmd = [python, "-m", "huselet", "run", "--config", str(d.config)]
            d.proc = subprocess.Popen(cmd, stderr=d.log, cwd=tree)
            daemons[side] = d
        t0 = time.monotonic()
        ready: dict[str, float] = {}
        while len(ready) < len(daemons) and time.monotonic() - t0 < timeout_s:
            for side, d in daemons.items():
                if side not in ready and (d.idle_count() if n else int(d.ready())) >= max(1, n):
                    ready[side] = time.monotonic() - t0
            time.sleep(0.3)
        print(f"N={n} idle after: " + ", ".join(f"{s} {t:.1f} s" for s, t in ready.items()))
        if len(ready) < len(daemons):
            print("  not all reached N within the timeout: skipped")
            return

        def window(seconds: float) -> str:
            pids = [d.proc.pid for d in daemons.values() if d.proc is not None]
            pids += [p.pid for p in floors.values()]
            with ThreadPoolExecutor(len(pids)) as pool:
                got = list(pool.map(lambda pid: idle_cpu_and_wakeups(pid, seconds), pids))
            floor_costs = {
                period: (pct * 10 / wakes if wakes else 0.0, wakes)
                for period, (pct, _, wakes) in zip(floors, got[len(daemons) :], strict=True)
            }
            parts = []
            for side, (pct, rough, wakes) in zip(daemons, got, strict=False):
                _, floor_pct = floor_at(wakes, floor_costs)
                per = pct * 10 / wakes if wakes else 0.0
                parts.append(
                    f"{side} {pct:.2f}%{'~' if rough else ''} {wakes:.2f} wake-ups/s "
                    f"({per:.1f} ms each; floor at its rate {floor_pct:.2f}%)"
                )
            parts += [
                f"floor {period:g}s {ms:.1f} ms/wake-up ({wakes:.2f}/s)"
                for period, (ms, wakes) in floor_costs.items()
            ]
            return " | ".join(parts)

        print(f"  early (3 s): {window(3.0)}", flush=True)
        time.sleep(17)
        for w in range(windows):
            line = window(10.0)
            load = Path("/proc/loadavg").read_text().split()[0]
            print(f"  settled {w + 1} (10 s): {line}  load {load}", flush=True)
    finally:
        for d in daemons.values():
            d.stop()
        for floor in floors.values():
            floor.kill()
            floor.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--ref", type=Path, required=True, help="the other checkout's root")
    parser.add_argument("--counts", default="0,500,2000")
    parser.add_argument("--windows", type=int, default=2)
    parser.add_argument("--start-timeout", type=float, default=300.0)
    parser.add_argument(
        "--floor-periods", default="1,5", help="bare Trio sleep loops measured alongside (s)"
    )
    args = parser.parse_args()
    floor_periods = [float(p) for p in args.floor_periods.split(",") if p]
    trees = {"ref": args.ref.resolve(), "this": HERE}
    root = Path(tempfile.mkdtemp(prefix="hldpair"))
    for n in (int(c) for c in args.counts.split(",") if c):
        run_pair(root, n, trees, args.windows, args.start_timeout, floor_periods)


if __name__ == "__main__":
    main()
