"""Daemon CPU per request at a low, paced rate: what most functions on a node see.

    .venv/bin/python bench/bench_lowrate.py [--ref PATH] [--rate 100] [--rounds 8]

``bench_invoke`` measures closed loops: the next request is sent the moment
the last reply arrives, so the daemon never sleeps between requests. Most
functions are called a few times a second, and between two requests the
daemon waits in epoll. On the VMs measured a thread pays for the memory it
touches after such a wait (a request at 100/s cost the daemon ~400-480 µs of
CPU against ~270 µs at concurrency 1 closed loop), so the work a request
touches, not only its instructions, is what costs at low rates.

One daemon per variant, started once, each serving the same no-op function
(``bench/functions/noop``, two warm instances); a client sends unsigned HTTP
requests at ``--rate`` per second over 2 connections, open loop
(``tenant_load.paced``: a request is due at a fixed time whatever the node
does), ``--duration`` s per phase, the variants' order rotated each round.
Printed per variant: the median and range over rounds of the daemon's CPU
per request (the scheduler's exact ns over all its threads), the same per
thread (the event loop, the log writer, Trio's thread cache), and quiet
latency p50/p99 pooled over rounds. Variants: ``this`` (this tree), ``ref``
(``--ref PATH``: that tree's daemon — its own ``.venv/bin/python`` if it has
one, else this venv with ``PYTHONPATH=PATH``, which swaps the daemon's code
but not the zygotes', which run ``python -I``), and ``no-access-log``
(this tree with ``[log] access_rate = 0``: what the access log costs), and
``this-b`` (a second daemon of this tree, started last: the A/A control).
The daemons start once, in that order, and on the VMs measured the one
started first has spent 70-240 µs more per request than the one started
last, and the order matters between the others too: read this - ref against
this - this-b, and run it again from the other tree (its copy of this file,
``--ref`` pointing here) so each tree takes the other's place; the mean of
the two runs' differences cancels the positions. (Early runs started every
daemon from the checkout's root, where ``python -m`` imported that
checkout's code for "ref" too; daemons now start from ``/``, see
``daemons.py``.)
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_invoke import NOOP, free_port
from daemons import spawn_ready
from procstats import cpu_ns
from tenant_load import p, paced, raw_request


class Variant(NamedTuple):
    name: str
    python: str
    env: dict[str, str]
    extra_config: str


class Daemon(NamedTuple):
    proc: subprocess.Popen[str]
    port: int


def start(root: Path, variant: Variant) -> Daemon:
    port = free_port()
    config = root / f"{variant.name}.toml"
    config.write_text(
        f"""
[node]
state_dir = "{root}/state-{variant.name}"
run_dir = "{root}/run-{variant.name}"
{variant.extra_config}
[gateway]
http = "127.0.0.1:{port}"

[[functions]]
name = "quiet"
package = "{NOOP}"
handler = "main:handler"
min_instances = 2
max_instances = 4
"""
    )
    proc = spawn_ready(
        [variant.python, "-m", "huselet", "run", "--config", str(config)],
        name=variant.name,
        env=variant.env,
    )
    return Daemon(proc, port)


def thread_cpu_ns(pid: int) -> dict[str, int]:
    """Per thread of ``pid``: "tid name" -> CPU ns (the scheduler's, from schedstat)."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/comm") as f:
                name = f.read().strip()
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                out[f"{tid} {name}"] = int(f.read().split()[0])
        except OSError:
            pass  # the thread ended meanwhile
    return out


def variants(args: argparse.Namespace) -> list[Variant]:
    here = Variant("this", sys.executable, {}, "")
    out = [here]
    if args.ref:
        ref = Path(args.ref).resolve()
        own = ref / ".venv" / "bin" / "python"
        if own.exists():
            out.append(Variant("ref", str(own), {}, ""))
        else:
            out.append(Variant("ref", sys.executable, {"PYTHONPATH": str(ref)}, ""))
    out.append(here._replace(name="no-access-log", extra_config="[log]\naccess_rate = 0\n"))
    out.append(here._replace(name="this-b"))  # the A/A control, started last
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ref", help="another tree to compare (a git worktree)")
    parser.add_argument("--rate", type=float, default=100.0, help="requests/s (default 100)")
    parser.add_argument("--duration", type=float, default=4.0, help="seconds per phase")
    parser.add_argument("--rounds", type=int, default=8)
    args = parser.parse_args()
    chosen = variants(args)
    root = Path(tempfile.mkdtemp(prefix="hllr"))
    daemons: dict[str, Daemon] = {}
    per_request: dict[str, list[float]] = {v.name: [] for v in chosen}
    per_thread: dict[str, dict[str, list[float]]] = {v.name: {} for v in chosen}
    latencies: dict[str, list[float]] = {v.name: [] for v in chosen}
    print(
        f"huselet bench_lowrate ({os.cpu_count()} CPUs, load average "
        f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}): {args.rate:g} req/s, "
        f"{args.duration:g} s x {args.rounds} rounds per variant, order rotated"
    )
    try:
        for variant in chosen:
            daemons[variant.name] = start(root, variant)
        time.sleep(2)  # every instance warm and idle
        n = int(args.rate * args.duration)
        for r in range(args.rounds):
            k = r % len(chosen)
            for variant in chosen[k:] + chosen[:k]:
                daemon = daemons[variant.name]
                batch = [raw_request(daemon.port, "quiet", None) for _ in range(n)]
                cpu0, threads0 = cpu_ns(daemon.proc.pid), thread_cpu_ns(daemon.proc.pid)
                lat, statuses = trio.run(paced, daemon.port, batch, args.rate, 2)
                cpu1, threads1 = cpu_ns(daemon.proc.pid), thread_cpu_ns(daemon.proc.pid)
                if statuses.get(200) != n:
                    raise SystemExit(f"{variant.name}: not every request succeeded: {statuses}")
                per_request[variant.name].append((cpu1 - cpu0) / 1e3 / n)
                for tid, ns in threads1.items():
                    used = (ns - threads0.get(tid, 0)) / 1e3 / n
                    per_thread[variant.name].setdefault(tid, []).append(used)
                latencies[variant.name] += lat
                time.sleep(0.5)
    finally:
        for daemon in daemons.values():
            daemon.proc.terminate()
        for daemon in daemons.values():
            daemon.proc.wait(30)
    print("   variant          cpu us/req (min..max)      p50 ms   p99 ms   per thread us/req")
    for variant in chosen:
        runs = per_request[variant.name]
        threads = {
            tid.split(" ", 1)[1] + f"[{tid.split(' ', 1)[0]}]": statistics.median(v)
            for tid, v in per_thread[variant.name].items()
            if statistics.median(v) >= 1.0
        }
        lat = latencies[variant.name]
        spread = f"({min(runs):.0f}..{max(runs):.0f})"
        print(
            f"   {variant.name:<15} {statistics.median(runs):7.1f} {spread:<18}"
            f"{p(lat, 50):7.3f}  {p(lat, 99):7.3f}   "
            + ", ".join(f"{name} {us:.1f}" for name, us in threads.items())
        )
    pairs = [("this", "this-b", "A/A: two daemons of this tree, the resolution")]
    if "ref" in per_request:
        pairs.insert(0, ("this", "ref", ""))
    for a, b, note in pairs:
        diffs = [x - y for x, y in zip(per_request[a], per_request[b], strict=True)]
        print(
            f"   {a} - {b}, paired by round: median {statistics.median(diffs):+.1f} us/req "
            f"(rounds {min(diffs):+.0f}..{max(diffs):+.0f}){'; ' + note if note else ''}"
        )
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
