"""Part 3 of ``bench_auth``: does a tenant over its rate hurt another tenant's latency?

Tenant ``quiet`` sends at a fixed rate (open loop, :func:`tenant_load.paced`)
in five conditions per round: ``idle-a`` and ``idle-b`` (alone, the same
work twice), ``noisy`` (while tenant ``noisy``, limit 20/s, offers a fixed
flood rate from its own process, :func:`tenant_load.flood_process`, pipelined
over a fixed number of connections), ``elsewhere`` (the same flood sent to
another node on this machine: the same load on the machine's 2 cores, none on
this node, so noisy/elsewhere is this node's own interference) and
``at-limit`` (tenant noisy sends exactly its limit, on one connection, and is
refused nothing: what its *admitted* share costs quiet, so noisy/at-limit is
what being over the limit adds — the refusals). The order rotates each round,
so drift in the machine's load favours no condition.

The verdict is the *pooled* p99 of each condition (every round's samples
together: rounds x duration x rate of them, 7,200 by default, so the p99 is
the 72nd-largest sample, not the 3rd of one short phase) and the ratio
noisy / idle (idle-a and idle-b together). Beside it the A/A ratio
idle-b / idle-a, measured the same way with the same number of samples per
side: how far two identical conditions differ on this machine right now. Each
ratio comes with a 95 % interval from resampling whole rounds
(:func:`resample.round_bootstrap`): a ratio whose interval holds 1.20 shows
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
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import loop_steps
import trio
from procstats import cpu_ns
from resample import round_bootstrap
from tenant_inproc import NOISY_RATE_PER_S
from tenant_load import NOISY, PIN_FLOOD, QUIET, flood_process, p, paced, raw_request, send_all

CONDITIONS = ("idle-a", "noisy", "idle-b", "elsewhere", "at-limit")
REQUIRED = ("idle-a", "noisy", "idle-b")  # the verdict; the other two explain it
# name -> (numerator, denominator) of a p99 ratio; "idle" is idle-a and idle-b pooled.
RATIOS = {
    "noisy/idle": ("noisy", "idle"),  # the verdict: target <= 1.20
    "A/A": ("idle-b", "idle-a"),  # the resolution: the same work twice
    "noisy/elsewhere": ("noisy", "elsewhere"),  # this node's interference, not the machine's
    "at-limit/idle": ("at-limit", "idle"),  # what noisy's admitted share costs quiet
    "noisy/at-limit": ("noisy", "at-limit"),  # what the excess and its refusals add
}
RATIO_NOTES = {
    "noisy/idle": "target <= 1.20",
    "A/A": "idle-b/idle-a, the same work twice: the resolution",
    "noisy/elsewhere": "the same flood sent to another node: this node's own interference",
    "at-limit/idle": f"noisy sending exactly its {NOISY_RATE_PER_S}/s: its admitted share",
    "noisy/at-limit": "what the excess and its refusals add",
}

# A node's count of tenant noisy's requests (admitted, throttled), read over its admin socket.
TenantCounts = Callable[[int], tuple[int, int]]


class Flood(NamedTuple):
    """Tenant noisy's traffic in a phase: where it goes, how much, on how many connections."""

    port: int
    rate: float
    connections: int


def _phase(
    pid: int,
    port: int,
    args: argparse.Namespace,
    spec: Flood | None,
    counts: TenantCounts | None = None,
) -> dict[str, Any]:
    n = int(args.duration * args.quiet_rate)
    batch = [raw_request(port, "quiet", QUIET) for _ in range(n)]
    ctx = multiprocessing.get_context("fork")  # no trio run is active between phases
    flood: dict[str, Any] = {}
    child = None
    if spec is not None:
        started, stop, out = ctx.Event(), ctx.Event(), ctx.Queue()
        count = int(spec.rate * (args.duration + 3))
        child = ctx.Process(
            target=flood_process,
            args=(spec.port, NOISY, "noisy", spec.rate, spec.connections, count),
            kwargs={
                "started": started,
                "stop": stop,
                "out": out,
                "nice": args.flood_nice,
                "cpus": PIN_FLOOD if args.pin else None,
                "reset": args.flood_exit == "reset",
            },
        )
        child.start()
        started.wait(120)  # its requests are signed
        time.sleep(1.0)  # the flood is under way (and the bucket empty) before we measure
    cpu0, t0, mono0 = cpu_ns(pid), time.perf_counter(), time.monotonic()
    begins: list[float] = []
    lat, statuses = trio.run(paced, port, batch, args.quiet_rate, 2, begins)
    wall = time.perf_counter() - t0
    cpu = (cpu_ns(pid) - cpu0) / 1e9
    if child is not None and spec is not None:
        stop.set()
        flood = out.get(timeout=60)
        child.join(60)
        left = counts(spec.port) if counts is not None else None  # the flood's sockets closed
        # The node answers a held connection's 429 (up to ~6 s later) before it finds
        # the flood gone: wait for that, so the flood's tail is not measured as the
        # next phase's (an idle one, say).
        flood["settle_s"] = settle(spec.port)
        if counts is not None and left is not None:
            # What the node still decided of noisy's queued requests after it left.
            admitted, throttled = counts(spec.port)
            flood["after_left"] = {"admitted": admitted - left[0], "throttled": throttled - left[1]}
    return {
        "quiet_statuses": statuses,
        "quiet_p50_ms": statistics.median(lat),
        "quiet_p99_ms": p(lat, 99),
        "latencies_ms": lat,
        "begins": begins,
        "window": (mono0, mono0 + wall),
        "daemon_cpu_s": cpu,
        "wall_s": wall,
        "daemon_cpu_pct": 100 * cpu / wall,
        "flood": flood,
    }


def settle(port: int, timeout_s: float = 20.0) -> float:
    """Wait until no TCP connection to local ``port`` is open (ESTABLISHED or CLOSE_WAIT:
    the peer is gone, the node has not closed its end yet); the seconds it took."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s and _open_connections(port):
        time.sleep(0.05)
    return time.monotonic() - t0


def _open_connections(port: int) -> int:
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                next(f)
                for line in f:
                    fields = line.split()
                    local, state = fields[1], fields[3]
                    if int(local.rsplit(":", 1)[1], 16) == port and state in ("01", "08"):
                        count += 1
        except FileNotFoundError:
            pass
    return count


def noisy_neighbour(
    pid: int,
    port: int,
    args: argparse.Namespace,
    rounds: int,
    elsewhere_port: int,
    counts: TenantCounts | None = None,
) -> dict[str, Any]:
    """Tenant quiet at a fixed rate: alone twice (A/A), while tenant noisy floods this
    node, while the same flood goes to another node on this machine (``elsewhere``),
    and while tenant noisy sends exactly its limit to this node (``at-limit``).

    ``counts``: tenant noisy's (admitted, throttled) on the node at a port; with it,
    each flood phase also reports what the node decided of the flood after it left."""
    phases: dict[str, list[dict[str, Any]]] = {name: [] for name in CONDITIONS}
    floods = {
        "noisy": Flood(port, args.flood_rate, args.flood_connections),
        "elsewhere": Flood(elsewhere_port, args.flood_rate, args.flood_connections),
        "at-limit": Flood(port, NOISY_RATE_PER_S, 1),
    }
    conditions = [name for name in CONDITIONS if name in args.conditions]
    # Not recorded: a node's first second after its start (first use of its code
    # paths and instances) reached a 116 ms p99 in a 1 s phase, far above any round's.
    _phase(pid, port, args, None)
    for r in range(rounds):
        k = r % len(conditions)
        for name in conditions[k:] + conditions[:k]:
            result = _phase(pid, port, args, floods.get(name), counts)
            result["round"] = r
            phases[name].append(result)
    phases = {name: runs for name, runs in phases.items() if runs}
    stalls = _stalls(phases, args.steps, port) if args.steps else None
    by_round = [
        {name: runs[r]["latencies_ms"] for name, runs in phases.items()} for r in range(rounds)
    ]
    for per in by_round:
        per["idle"] = [*per["idle-a"], *per["idle-b"]]
    for runs in phases.values():
        for run in runs:
            run.pop("begins")
            run.pop("latencies_ms")
    pooled = {name: [x for per in by_round for x in per[name]] for name in by_round[0]}
    stats = {
        name: {"n": len(lat), "p50_ms": statistics.median(lat), "p99_ms": p(lat, 99)}
        for name, lat in pooled.items()
    }
    pairs = {k: ab for k, ab in RATIOS.items() if ab[0] in pooled and ab[1] in pooled}

    def p99_ratios(samples: Mapping[str, list[float]]) -> dict[str, float]:
        return {k: p(samples[a], 99) / p(samples[b], 99) for k, (a, b) in pairs.items()}

    # Per round (robust to one round the machine stalled in): "idle" is the mean
    # of that round's two idle p99s, so the round's two idle phases weigh the same.
    def round_p99(r: int, name: str) -> float:
        if name == "idle":
            return (round_p99(r, "idle-a") + round_p99(r, "idle-b")) / 2
        return float(phases[name][r]["quiet_p99_ms"])

    # (One round has no interval: nothing to resample.)
    intervals = (
        round_bootstrap(by_round, p99_ratios, replicates=args.replicates) if rounds > 1 else {}
    )
    pooled_ratios = p99_ratios(pooled)
    ratios = {
        k: {
            "pooled": pooled_ratios[k],
            "rounds": statistics.median(round_p99(r, a) / round_p99(r, b) for r in range(rounds)),
            "ci95": intervals.get(k),
        }
        for k, (a, b) in pairs.items()
    }
    noisy = phases["noisy"]
    idle = phases["idle-a"] + phases["idle-b"]
    cpu_pct = {
        name: statistics.median(x["daemon_cpu_pct"] for x in runs)
        for name, runs in (("idle", idle), *phases.items())
    }
    answered = statistics.median(
        sum(x["flood"]["statuses"].values()) / x["flood"]["wall_s"] for x in noisy
    )
    offered = statistics.median(x["flood"]["sent"] / x["flood"]["wall_s"] for x in noisy)
    extra_us_per_s = (cpu_pct["noisy"] - cpu_pct["idle"]) * 1e4  # % of a core -> us per s
    return {
        "phases": phases,
        "stalls": stalls,
        "pooled": stats,
        "ratios": ratios,
        "p50_ratio": stats["noisy"]["p50_ms"] / stats["idle"]["p50_ms"],
        "daemon_cpu_pct": cpu_pct,
        "flood_answered_per_s": answered,
        "flood_sent_per_s": offered,
        "daemon_us_per_flood_answer": extra_us_per_s / answered if answered else 0.0,
        "daemon_us_per_flood_sent": extra_us_per_s / offered if offered else 0.0,
    }


def _stalls(phases: dict[str, list[dict[str, Any]]], path: str, port: int) -> dict[str, Any]:
    """Per condition: the daemon's long loop passes (``loop_steps``) during its phases,
    and what quiet's slowest 1 % of samples overlapped."""
    time.sleep(loop_steps.FLUSH_S + 0.5)
    trio.run(send_all, port, [raw_request(port, "quiet", QUIET)], 1)  # a pass: it flushes
    time.sleep(0.5)
    record = loop_steps.load(path)
    out: dict[str, Any] = {}
    for name, runs in phases.items():
        windows = [loop_steps.window_stats(record, *run["window"]) for run in runs]
        samples = [
            (b, ms)
            for run in runs
            for b, ms in zip(run["begins"], run["latencies_ms"], strict=True)
        ]
        cut = p([ms for _, ms in samples], 99)
        slow = [(b, ms) for b, ms in samples if ms >= cut]
        out[name] = {
            "long_passes": sum(w["long_passes"] for w in windows),
            "long_pass_ms": round(sum(w["long_pass_ms"] for w in windows), 1),
            "max_pass_ms": max(w["max_pass_ms"] for w in windows),
            "long_steps": sum(w["long_steps"] for w in windows),
            "max_step_ms": max(w["max_step_ms"] for w in windows),
            "slowest_1pct": loop_steps.blame(record, slow),
            "long_steps_by_task_ms": _merge(w["long_steps_by_task_ms"] for w in windows),
        }
    return out


def _merge(rows: Any) -> list[tuple[str, float]]:
    total: dict[str, float] = {}
    for row in rows:
        for k, v in row:
            total[k] = total.get(k, 0.0) + v
    return sorted(((k, round(v, 1)) for k, v in total.items()), key=lambda kv: -kv[1])[:6]


def _after_left(flood: dict[str, Any]) -> str:
    after = flood.get("after_left")
    if after is None:
        return ""
    return f", after it left: admitted {after['admitted']} throttled {after['throttled']}"


def print_noisy(nn: dict[str, Any], args: argparse.Namespace) -> None:
    print(
        f"3. tenant quiet at {args.quiet_rate:g} req/s (2 connections, open loop): alone twice "
        f"(idle-a, idle-b), while tenant noisy (limit {NOISY_RATE_PER_S}/s) offers "
        f"{args.flood_rate:g} req/s "
        f"over {args.flood_connections} pipelined connections from its own process "
        f"(nice {args.flood_nice}; it leaves by {args.flood_exit}); conditions "
        f"{', '.join(nn['phases'])}; {args.duration:g} s per phase, order rotated per round:"
    )
    for phase, results in nn["phases"].items():
        for r in results:
            f = r["flood"]
            flood = (
                f"  flood sent {f['sent']}/{f['offered']} {f['statuses']} "
                f"connects {f['connects']} cpu {f['cpu_pct_of_a_core']:.0f}% "
                f"settled {f['settle_s']:.1f} s{_after_left(f)}"
                if f
                else ""
            )
            print(
                f"   {phase:<9} r{r['round']} quiet p50 {r['quiet_p50_ms']:.3f} ms"
                f"  p99 {r['quiet_p99_ms']:.3f} ms  {r['quiet_statuses']}"
                f"  daemon cpu {r['daemon_cpu_pct']:.1f}%{flood}"
            )
    print("   pooled over rounds:   samples   p50 ms   p99 ms")
    for name, st in nn["pooled"].items():
        print(f"     {name:<18} {st['n']:>7} {st['p50_ms']:8.3f} {st['p99_ms']:8.3f}")
    print(
        "   quiet's p99 ratios: pooled [95 % interval, resampling rounds], median of rounds' "
        f"ratios (p50 noisy/idle {nn['p50_ratio']:.2f}):"
    )
    for name, r in nn["ratios"].items():
        ci = "[{:.2f} .. {:.2f}]".format(*r["ci95"]) if r["ci95"] else "[one round]"
        print(
            f"     {name:<15} {r['pooled']:5.2f} {ci}  rounds {r['rounds']:.2f}"
            f"  ({RATIO_NOTES[name]})"
        )
    if nn["stalls"]:
        print("   the daemon's loop passes > 0.3 ms (bench/loop_steps.py), per condition:")
        for name, st in nn["stalls"].items():
            slow = st["slowest_1pct"]
            print(
                f"     {name:<9} passes {st['long_passes']:>5} ({st['long_pass_ms']:.0f} ms, "
                f"max {st['max_pass_ms']:.2f}); steps {st['long_steps']:>5} "
                f"(max {st['max_step_ms']:.2f}) {st['long_steps_by_task_ms']}"
            )
            print(
                f"       slowest 1 %: {slow['with_long_pass']}/{slow['samples']} overlapped "
                f"{slow['long_pass_ms']:.1f} ms of long passes; by task {slow['by_task_ms']} "
                f"steps {slow['by_task_steps']}"
            )
    cpu = nn["daemon_cpu_pct"]
    shares = ", ".join(f"{name} {pct:.1f}%" for name, pct in cpu.items())
    print(
        f"   daemon cpu (median of phases) {shares}; "
        f"flood sent {nn['flood_sent_per_s']:.0f} req/s, answered "
        f"{nn['flood_answered_per_s']:.0f} req/s; (noisy - idle) daemon CPU "
        f"{nn['daemon_us_per_flood_answer']:.0f} us per answer, "
        f"{nn['daemon_us_per_flood_sent']:.1f} us per request sent"
    )
