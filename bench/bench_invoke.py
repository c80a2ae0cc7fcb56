"""Warm invocations of a no-op function through the HTTP ingress, side by side
with a baseline (the same handler behind a minimal one-process server).

    .venv/bin/python bench/bench_invoke.py [--concurrency 1,8,32] [--duration 5]

Starts two ``huselet run`` daemons with temporary configs — one with metrics
(``[metrics] enabled = true``, the default, with the /metrics listener on) and
one without (``enabled = false``) — and the baseline server, then for each
concurrency level runs the same closed-loop load against each in turn and
prints requests/s, p50 and p99 latency, the ratio to the baseline and the
daemon's own CPU time per request (utime+stime from /proc, instances not
counted): the difference between the two daemons is what metrics cost the hot
path. The load generator runs in this process; on a 2-core machine it
competes with the servers for CPU, as a gateway on the same host would.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent))
from loadgen import LoadResult, run_load

BENCH = Path(__file__).resolve().parent
NOOP = BENCH / "functions" / "noop"


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_daemon(
    root: Path, max_instances: int, *, metrics: bool = True
) -> tuple[subprocess.Popen[str], int]:
    port = free_port()
    root.mkdir(parents=True, exist_ok=True)
    config = root / "bench.toml"
    metrics_table = (
        f'[metrics]\nhttp = "127.0.0.1:{free_port()}"' if metrics else "[metrics]\nenabled = false"
    )
    config.write_text(
        f"""
[node]
state_dir = "{root}/state"
run_dir = "{root}/run"
log_level = "warning"
[gateway]
http = "127.0.0.1:{port}"
{metrics_table}
[[functions]]
name = "noop"
package = "{NOOP}"
handler = "main:handler"
max_instances = {max_instances}
timeout_ms = 10000
"""
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "huselet", "run", "--config", str(config), "--log-level", "info"],
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    deadline = time.monotonic() + 30
    for line in proc.stderr:
        if '"huselet ready"' in line:
            break
        if time.monotonic() > deadline:
            raise SystemExit("daemon did not start")
    # Keep draining stderr so the daemon never blocks on a full pipe.
    import threading

    threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()  # type: ignore[union-attr]
    return proc, port


def start_baseline() -> tuple[subprocess.Popen[str], int]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, str(BENCH / "baseline_server.py"), str(port), str(NOOP), "main:handler"],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    proc.stdout.readline()
    return proc, port


def cpu_seconds(pid: int) -> float:
    """utime + stime of one process (not its children: instances are not the daemon)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def median_run(runs: list[tuple[LoadResult, float]]) -> tuple[LoadResult, float]:
    """The run with the median CPU per request."""
    return sorted(runs, key=lambda run: run[1])[len(runs) // 2]


def row(
    name: str, conc: int, r: LoadResult, ref: LoadResult | None, cpu_us: float | None = None
) -> str:
    ratio = f"{r.rps / ref.rps:6.2f}x" if ref and ref.rps else "      -"
    cpu = f"{cpu_us:>9.1f}" if cpu_us is not None else "        -"
    return (
        f"{name:<12} {conc:>5} {r.rps:>10.0f} {r.p50:>9.3f} {r.p99:>9.3f} {r.errors:>6} "
        f"{ratio} {cpu}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--concurrency", default="1,8,32")
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--json", action="store_true", help="also print results as JSON")
    parser.add_argument("--rounds", type=int, default=3, help="off/on rounds per level (median)")
    args = parser.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]
    body = b'{"name": "bench"}'
    root = Path(tempfile.mkdtemp(prefix="hlb"))
    daemon, dport = start_daemon(root / "on", max_instances=max(levels))
    plain, pport = start_daemon(root / "off", max_instances=max(levels), metrics=False)
    baseline, bport = start_baseline()
    results = []
    try:
        cpus = os.cpu_count()
        print(f"huselet bench_invoke: no-op function, {args.duration:g}s per run, {cpus} CPUs")
        header = ("target", "conc", "req/s", "p50 ms", "p99 ms", "errors", "vs base", "cpu us/req")
        print("{:<12} {:>5} {:>10} {:>9} {:>9} {:>6} {:>7} {:>9}".format(*header))
        for conc in levels:
            base = trio.run(
                partial(
                    run_load,
                    "127.0.0.1",
                    bport,
                    "/",
                    body,
                    concurrency=conc,
                    duration=args.duration,
                )
            )

            def measured(proc: subprocess.Popen[str], port: int) -> tuple[LoadResult, float]:
                before = cpu_seconds(proc.pid)
                result = trio.run(
                    partial(
                        run_load,
                        "127.0.0.1",
                        port,
                        "/v1/invoke/noop",
                        body,
                        concurrency=conc,  # noqa: B023 (called in this iteration only)
                        duration=args.duration,
                    )
                )
                used = cpu_seconds(proc.pid) - before
                return result, used / max(1, result.requests) * 1e6

            # Alternate off/on for --rounds rounds and take medians: on a shared
            # machine one run's CPU per request swings by tens of percent.
            offs: list[tuple[LoadResult, float]] = []
            ons: list[tuple[LoadResult, float]] = []
            for _ in range(args.rounds):
                offs.append(measured(plain, pport))
                ons.append(measured(daemon, dport))
            node, node_us = median_run(ons)
            off, off_us = median_run(offs)
            print(row("baseline", conc, base, None))
            print(row("huselet", conc, node, base, node_us))
            print(row("no-metrics", conc, off, base, off_us))
            cost = (node_us / off_us - 1) * 100
            pairs = zip(offs, ons, strict=True)
            spread = ", ".join(f"{us:.0f}/{on_us:.0f}" for (_, us), (_, on_us) in pairs)
            print(
                f"metrics cost at concurrency {conc}: {cost:+.1f} % daemon CPU per request "
                f"(median of {args.rounds}; off/on us per round: {spread})"
            )
            results.append(
                {
                    "concurrency": conc,
                    "baseline": {"rps": base.rps, "p50_ms": base.p50, "p99_ms": base.p99},
                    "huselet": {
                        "rps": node.rps,
                        "p50_ms": node.p50,
                        "p99_ms": node.p99,
                        "errors": node.errors,
                        "cpu_us_per_request": node_us,
                    },
                    "huselet_no_metrics": {"rps": off.rps, "cpu_us_per_request": off_us},
                }
            )
    finally:
        daemon.terminate()
        plain.terminate()
        baseline.terminate()
        daemon.wait(30)
        plain.wait(30)
        baseline.wait(10)
    if args.json:
        print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
