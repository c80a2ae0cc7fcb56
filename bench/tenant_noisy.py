"""Part 3 of ``bench_auth``: does a tenant over its rate hurt another tenant's latency?

Tenant ``quiet`` sends at a fixed rate (open loop, latency from when each
request was due) alone, and while tenant ``noisy`` (limit 20/s) offers a
fixed flood rate from its own process (:func:`tenant_load.flood_process`),
pipelined over a fixed number of connections. Reported per phase: quiet's
p50/p99, the daemon's CPU, and the flood's offered/sent/answered requests,
its connections (the node closes persistent offenders) and its own CPU (it
shares the machine's cores with everything else).
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import time
from typing import Any

import trio
from tenant_load import NOISY, QUIET, cpu_s, flood_process, p, paced, raw_request


def noisy_neighbour(pid: int, port: int, args: argparse.Namespace, rounds: int) -> dict[str, Any]:
    """Tenant quiet at a fixed rate, alone and while tenant noisy floods at a fixed rate.

    Phases run idle/noisy in round 0, noisy/idle in round 1, … (ABBA), so a
    drift in the machine's load does not favour either; each round's pair is
    compared (paired ratio) and the medians over rounds are reported with the
    idle phases' own spread (the noise floor of this machine right now).
    """
    n = int(args.duration * args.quiet_rate)
    phases: dict[str, list[dict[str, Any]]] = {"idle": [], "noisy": []}
    ctx = multiprocessing.get_context("fork")  # no trio run is active between phases
    for r in range(rounds):
        for phase in ("idle", "noisy") if r % 2 == 0 else ("noisy", "idle"):
            batch = [raw_request(port, "quiet", QUIET) for _ in range(n)]
            flood: dict[str, Any] = {}
            child = None
            if phase == "noisy":
                started, stop, out = ctx.Event(), ctx.Event(), ctx.Queue()
                count = int(args.flood_rate * (args.duration + 3))
                child = ctx.Process(
                    target=flood_process,
                    args=(port, NOISY, "noisy", args.flood_rate, args.flood_connections, count),
                    kwargs={"started": started, "stop": stop, "out": out},
                )
                child.start()
                started.wait(120)  # its requests are signed
                time.sleep(1.0)  # the flood is under way (and the bucket empty) before we measure
            cpu0, t0 = cpu_s(pid), time.perf_counter()
            lat, statuses = trio.run(paced, port, batch, args.quiet_rate, 2)
            daemon_pct = 100 * (cpu_s(pid) - cpu0) / (time.perf_counter() - t0)
            if child is not None:
                stop.set()
                flood = out.get(timeout=60)
                child.join(60)
            phases[phase].append(
                {
                    "round": r,
                    "quiet_statuses": statuses,
                    "quiet_p50_ms": statistics.median(lat),
                    "quiet_p99_ms": p(lat, 99),
                    "latencies_ms": lat,
                    "daemon_cpu_pct": daemon_pct,
                    "flood": flood,
                }
            )
    idle, noisy = phases["idle"], phases["noisy"]
    ratios = [b["quiet_p99_ms"] / a["quiet_p99_ms"] for a, b in zip(idle, noisy, strict=True)]
    med = {
        f"{name}_{k}": statistics.median(x[f"quiet_{k}_ms"] for x in runs)
        for name, runs in phases.items()
        for k in ("p50", "p99")
    }
    idle_p99 = [x["quiet_p99_ms"] for x in idle]
    flood_rps = statistics.median(
        sum(x["flood"]["statuses"].values()) / x["flood"]["wall_s"] for x in noisy
    )
    extra_pct = statistics.median(x["daemon_cpu_pct"] for x in noisy) - statistics.median(
        x["daemon_cpu_pct"] for x in idle
    )
    return {
        "phases": phases,
        "p99_ratios": ratios,
        "medians_ms": med,
        "p99_ratio_of_medians": med["noisy_p99"] / med["idle_p99"],
        "idle_p99_spread": max(idle_p99) / min(idle_p99),
        # Every phase's requests together: a p99 over rounds x duration x rate samples.
        "pooled_p99_ms": {
            name: p([x for run in runs for x in run.pop("latencies_ms")], 99)
            for name, runs in phases.items()
        },
        "flood_answered_per_s": flood_rps,
        "daemon_us_per_flood_request": 1e4 * extra_pct / flood_rps if flood_rps else 0.0,
    }


def print_noisy(nn: dict[str, Any], args: argparse.Namespace) -> None:
    print(
        f"3. tenant quiet at {args.quiet_rate:g} req/s (2 connections, open loop) alone, then "
        f"while tenant noisy (limit 20/s) offers {args.flood_rate:g} req/s over "
        f"{args.flood_connections} pipelined connections from its own process; ABBA order:"
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
                f"  daemon cpu {r['daemon_cpu_pct']:.0f}%{flood}"
            )
    med, ratios = nn["medians_ms"], nn["p99_ratios"]
    print(
        f"   medians over rounds: idle p50 {med['idle_p50']:.3f} p99 {med['idle_p99']:.3f} ms; "
        f"noisy p50 {med['noisy_p50']:.3f} p99 {med['noisy_p99']:.3f} ms"
    )
    print(
        f"   quiet p99 noisy/idle = {nn['p99_ratio_of_medians']:.2f} (ratio of medians; "
        f"paired per round {statistics.median(ratios):.2f}, range {min(ratios):.2f} .. "
        f"{max(ratios):.2f}; target <= 1.20); noise floor: idle p99 max/min over rounds "
        f"{nn['idle_p99_spread']:.2f}"
    )
    pooled = nn["pooled_p99_ms"]
    print(
        f"   pooled over rounds: quiet p99 idle {pooled['idle']:.3f} ms, noisy "
        f"{pooled['noisy']:.3f} ms, ratio {pooled['noisy'] / pooled['idle']:.2f}"
    )
    print(
        f"   flood answered {nn['flood_answered_per_s']:.0f} req/s; daemon CPU per flood "
        f"request ~{nn['daemon_us_per_flood_request']:.0f} us (noisy - idle daemon CPU)"
    )
