"""Part 3 of ``bench_auth``: does a tenant over its rate hurt another tenant's latency?

Tenant ``quiet`` sends at a fixed rate (open loop, :func:`tenant_load.paced`)
in four conditions per round: ``idle-a`` and ``idle-b`` (alone, the same
work twice), ``noisy`` (while tenant ``noisy``, limit 20/s, offers a fixed
flood rate from its own process, :func:`tenant_load.flood_process`, pipelined
over a fixed number of connections) and ``elsewhere`` (the same flood sent to
another node on this machine: the same load on the machine's 2 cores, none on
this node, so noisy/elsewhere is this node's own interference). The order
rotates each round, so drift in the machine's load favours no condition.

The verdict is the *pooled* p99 of each condition (every round's samples
together: rounds x duration x rate of them, ~3,000 by default, so the p99 is
the ~30th-largest sample, not the 4th of one short phase) and the ratio
noisy / idle (idle-a and idle-b together). Beside it the A/A ratio
idle-b / idle-a, measured the same way with the same number of samples per
side: how far two identical conditions differ on this machine right now, i.e.
the resolution of the noisy / idle ratio. A ratio inside the A/A spread says
nothing either way.

Daemon CPU is exact (:func:`procstats.cpu_ns`, the scheduler's ns), reported
per condition and as the flood's cost: (noisy - idle) daemon CPU per flood
request the node read (answered) and per request offered.
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import time
from typing import Any

import trio
from procstats import cpu_ns
from tenant_load import NOISY, QUIET, flood_process, p, paced, raw_request

CONDITIONS = ("idle-a", "noisy", "idle-b", "elsewhere")


def _phase(pid: int, port: int, args: argparse.Namespace, flood_port: int | None) -> dict[str, Any]:
    n = int(args.duration * args.quiet_rate)
    batch = [raw_request(port, "quiet", QUIET) for _ in range(n)]
    ctx = multiprocessing.get_context("fork")  # no trio run is active between phases
    flood: dict[str, Any] = {}
    child = None
    if flood_port is not None:
        started, stop, out = ctx.Event(), ctx.Event(), ctx.Queue()
        count = int(args.flood_rate * (args.duration + 3))
        child = ctx.Process(
            target=flood_process,
            args=(flood_port, NOISY, "noisy", args.flood_rate, args.flood_connections, count),
            kwargs={"started": started, "stop": stop, "out": out, "nice": args.flood_nice},
        )
        child.start()
        started.wait(120)  # its requests are signed
        time.sleep(1.0)  # the flood is under way (and the bucket empty) before we measure
    cpu0, t0 = cpu_ns(pid), time.perf_counter()
    lat, statuses = trio.run(paced, port, batch, args.quiet_rate, 2)
    wall = time.perf_counter() - t0
    cpu = (cpu_ns(pid) - cpu0) / 1e9
    if child is not None:
        stop.set()
        flood = out.get(timeout=60)
        child.join(60)
    return {
        "quiet_statuses": statuses,
        "quiet_p50_ms": statistics.median(lat),
        "quiet_p99_ms": p(lat, 99),
        "latencies_ms": lat,
        "daemon_cpu_s": cpu,
        "wall_s": wall,
        "daemon_cpu_pct": 100 * cpu / wall,
        "flood": flood,
    }


def noisy_neighbour(
    pid: int, port: int, args: argparse.Namespace, rounds: int, elsewhere_port: int
) -> dict[str, Any]:
    """Tenant quiet at a fixed rate: alone twice (A/A), while tenant noisy floods this
    node, and while the same flood goes to another node on this machine (``elsewhere``)."""
    phases: dict[str, list[dict[str, Any]]] = {name: [] for name in CONDITIONS}
    floods = {"noisy": port, "elsewhere": elsewhere_port}
    for r in range(rounds):
        k = r % len(CONDITIONS)
        for name in CONDITIONS[k:] + CONDITIONS[:k]:
            result = _phase(pid, port, args, floods.get(name))
            result["round"] = r
            phases[name].append(result)
    pooled = {
        name: [x for run in runs for x in run.pop("latencies_ms")] for name, runs in phases.items()
    }
    pooled["idle"] = pooled["idle-a"] + pooled["idle-b"]
    stats = {
        name: {"n": len(lat), "p50_ms": statistics.median(lat), "p99_ms": p(lat, 99)}
        for name, lat in pooled.items()
    }
    noisy = phases["noisy"]
    idle = phases["idle-a"] + phases["idle-b"]
    # Per round (robust to one round the machine stalled in): noisy against the
    # mean of that round's two idle phases, and the two idle phases against each other.
    per_round = [
        (
            n["quiet_p99_ms"] / ((a["quiet_p99_ms"] + b["quiet_p99_ms"]) / 2),
            b["quiet_p99_ms"] / a["quiet_p99_ms"],
            n["quiet_p99_ms"] / e["quiet_p99_ms"],
        )
        for a, n, b, e in zip(
            phases["idle-a"], noisy, phases["idle-b"], phases["elsewhere"], strict=True
        )
    ]
    idle_cpu_pct = statistics.median(x["daemon_cpu_pct"] for x in idle)
    noisy_cpu_pct = statistics.median(x["daemon_cpu_pct"] for x in noisy)
    answered = statistics.median(
        sum(x["flood"]["statuses"].values()) / x["flood"]["wall_s"] for x in noisy
    )
    offered = statistics.median(x["flood"]["sent"] / x["flood"]["wall_s"] for x in noisy)
    extra_us_per_s = (noisy_cpu_pct - idle_cpu_pct) * 1e4  # % of a core -> us per s
    return {
        "phases": phases,
        "pooled": stats,
        "p99_ratio": stats["noisy"]["p99_ms"] / stats["idle"]["p99_ms"],
        "p99_ratio_aa": stats["idle-b"]["p99_ms"] / stats["idle-a"]["p99_ms"],
        "p50_ratio": stats["noisy"]["p50_ms"] / stats["idle"]["p50_ms"],
        "p99_ratio_rounds": statistics.median(r[0] for r in per_round),
        "p99_ratio_aa_rounds": statistics.median(r[1] for r in per_round),
        "p99_ratio_elsewhere": stats["noisy"]["p99_ms"] / stats["elsewhere"]["p99_ms"],
        "p99_ratio_elsewhere_rounds": statistics.median(r[2] for r in per_round),
        "daemon_cpu_pct": {"idle": idle_cpu_pct, "noisy": noisy_cpu_pct},
        "flood_answered_per_s": answered,
        "flood_sent_per_s": offered,
        "daemon_us_per_flood_answer": extra_us_per_s / answered if answered else 0.0,
        "daemon_us_per_flood_sent": extra_us_per_s / offered if offered else 0.0,
    }


def print_noisy(nn: dict[str, Any], args: argparse.Namespace) -> None:
    print(
        f"3. tenant quiet at {args.quiet_rate:g} req/s (2 connections, open loop): alone twice "
        f"(idle-a, idle-b) and while tenant noisy (limit 20/s) offers {args.flood_rate:g} req/s "
        f"over {args.flood_connections} pipelined connections from its own process "
        f"(nice {args.flood_nice}); "
        f"{args.duration:g} s per phase, order rotated per round:"
    )
    for phase, results in nn["phases"].items():
        for r in results:
            f = r["flood"]
            flood = (
                f"  flood sent {f['sent']}/{f['offered']} {f['statuses']} "
                f"connects {f['connects']} cpu {f['cpu_pct_of_a_core']:.0f}%"
                if f
                else ""
            )
            print(
                f"   {phase:<6} r{r['round']} quiet p50 {r['quiet_p50_ms']:.3f} ms"
                f"  p99 {r['quiet_p99_ms']:.3f} ms  {r['quiet_statuses']}"
                f"  daemon cpu {r['daemon_cpu_pct']:.1f}%{flood}"
            )
    print("   pooled over rounds:   samples   p50 ms   p99 ms")
    for name in ("idle-a", "idle-b", "idle", "noisy", "elsewhere"):
        s = nn["pooled"][name]
        print(f"     {name:<18} {s['n']:>7} {s['p50_ms']:8.3f} {s['p99_ms']:8.3f}")
    print(
        f"   quiet p99 noisy/idle = {nn['p99_ratio']:.2f} (target <= 1.20); "
        f"A/A idle-b/idle-a = {nn['p99_ratio_aa']:.2f} (the resolution: same work twice); "
        f"p50 noisy/idle = {nn['p50_ratio']:.2f}"
    )
    print(
        f"   median of per-round p99 ratios: noisy/idle {nn['p99_ratio_rounds']:.2f}, "
        f"A/A {nn['p99_ratio_aa_rounds']:.2f} (a round the machine stalled in moves these less)"
    )
    print(
        f"   noisy/elsewhere (the same flood sent to another node on this machine: what is "
        f"left is this node's interference, not the machine's): pooled "
        f"{nn['p99_ratio_elsewhere']:.2f}, per round {nn['p99_ratio_elsewhere_rounds']:.2f}"
    )
    cpu = nn["daemon_cpu_pct"]
    print(
        f"   daemon cpu (median of phases) idle {cpu['idle']:.1f}%, noisy {cpu['noisy']:.1f}%; "
        f"flood sent {nn['flood_sent_per_s']:.0f} req/s, answered "
        f"{nn['flood_answered_per_s']:.0f} req/s; (noisy - idle) daemon CPU "
        f"{nn['daemon_us_per_flood_answer']:.0f} us per answer, "
        f"{nn['daemon_us_per_flood_sent']:.1f} us per request sent"
    )
