"""The cost of tenants at the gateway: signature verification per request, and a
throttled tenant's effect on another tenant's latency. Baselines in the same run.
This is the benchmark of record for signature verification (``bench_invoke``'s
``signed-http`` mode reports it too, coarser: two daemons, :mod:`invoke_signed`).

    .venv/bin/python bench/bench_auth.py [--requests 5000] [--rounds 5] [--duration 3]

1. **In process** (CPU time, ``time.process_time``): ``Admission.admit`` plus
   the body check on pre-signed requests, against the same call in open mode
   (no authentication) and in bearer-token mode; and ``admit_call`` for signed
   framed calls. This is the verification cost alone: no sockets, no parsing.
2. **Daemon CPU per request**: real daemons serve the same no-op function; the
   same number of requests (pre-signed before the clock starts, so the
   client's signing is not counted) is sent to each target and the daemon
   process's own CPU time (exact: the scheduler's nanoseconds of its threads,
   :func:`procstats.cpu_ns`; the workers are other processes) is divided by
   the requests. Targets run interleaved,
   ``--rounds`` times; differences are taken *within* each round (paired, so
   drift from other load cancels) and reported as median and min..max. The
   headline, ``same:signed - same:open``, is one daemon sent the same kind of
   signed bytes with ``[auth]`` switched on and off by a reload: the
   verification alone. Across two daemons: ``signed - open+hdrs`` (the open
   daemon parsing the same signed headers), and ``open-b - open`` as the A/A
   control (how far two daemons doing the same work differ). ``framed:signed -
   framed:open`` is the same one-daemon pairing over the framed ingress, with
   pre-signed calls forwarded as is (``call(..., auth=...)``).
   Beside on-minus-off, the daemon's own account (``admission.verify_cost``
   over the admin socket, read around each round outside its CPU window): the
   thread CPU of one verification in 16, signature plus body hash ("direct");
   and an A/A row per ingress (``same:signed-b - same:signed``,
   ``framed:signed-b - framed:signed``: the same target twice in a round),
   which is the resolution of on-minus-off.
3. **Noisy neighbour** (:mod:`tenant_noisy`): tenant ``quiet`` at a fixed
   rate (``--quiet-rate``, open loop) alone twice (idle-a, idle-b: the A/A
   control) and while tenant ``noisy`` (limit 20/s) offers ``--flood-rate``
   req/s pipelined over ``--flood-connections`` from its own process, and
   while that flood goes to another node on the machine (``elsewhere``: the
   machine's load without this node's), and while noisy sends exactly its limit
   (``at-limit``); the conditions (``--conditions``) rotate over
   ``--noisy-rounds`` rounds of ``--duration`` s.
   Reported: quiet's pooled p50/p99 per condition (7,200 samples each by
   default), the ratio noisy/idle (target ≤ 1.20) beside the A/A ratio
   idle-b/idle-a (the resolution), each with a 95 % interval from resampling
   rounds (:mod:`resample`), noisy/elsewhere, at-limit/idle, noisy/at-limit, the
   daemon's CPU, and the flood's sent/answered requests, connections and own CPU.

The machine's load average is printed before and after: on a shared machine
read the spread, not one number.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from daemons import spawn_ready
from invoke_signed import verify_us
from procstats import cpu_ns
from tenant_inproc import PAUSE_S, in_process, write_keys
from tenant_load import (
    PIN_FLOOD,
    PIN_NODE,
    QUIET,
    p,
    raw_request,
    send_all,
    send_framed,
    signed_calls,
)
from tenant_noisy import CONDITIONS, REQUIRED, noisy_neighbour, print_noisy

from huselet.admin.client import AdminClient
from huselet.client.signing import AccessKey

BENCH = Path(__file__).resolve().parent
NOOP = BENCH / "functions" / "noop"


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_config(
    root: Path, name: str, port: int, framed: int, *, signed: bool, auth: bool
) -> Path:
    """``signed``: the functions belong to tenants; ``auth``: signed requests are required."""
    # The replay cache has its default size (auth.replay_cache_mb): it holds the
    # whole skew window at the rates this bench reaches.
    section = f'[auth]\nkeys_file = "{write_keys(root)}"\n' if auth else ""
    config = root / f"{name}.toml"
    config.write_text(
        f"""
[node]
state_dir = "{root}/state-{name}"
run_dir = "{root}/run-{name}"
log_level = "warning"
{section}
[gateway]
http = "127.0.0.1:{port}"
framed = "127.0.0.1:{framed}"
"""
        + "".join(
            f"""
[[functions]]
name = "{fn}"
package = "{NOOP}"
handler = "main:handler"
max_instances = 4
min_instances = 2
timeout_ms = 10000
{f'tenant = "{fn}"' if signed else ""}
"""
            for fn in ("quiet", "noisy")
        )
    )
    return config


class Node(NamedTuple):
    proc: subprocess.Popen[str]
    port: int  # HTTP
    framed: int  # the framed ingress


def start_daemon(
    root: Path, *, signed: bool, steps: str | None = None, cpus: set[int] | None = None
) -> Node:
    """``steps``: run it under bench/loop_steps.py, recording its long loop passes there.
    ``cpus``: the CPUs it (and every zygote and instance it forks) may run on."""
    port, framed = free_port(), free_port()
    name = "signed" if signed else "open"
    config = write_config(root, name, port, framed, signed=signed, auth=signed)
    command = ["-m", "huselet"] if steps is None else [str(BENCH / "loop_steps.py"), steps]
    proc = spawn_ready(
        [sys.executable, *command, "run", "--config", str(config), "--log-level", "info"],
        name=name,
        preexec_fn=None if cpus is None else lambda: os.sched_setaffinity(0, cpus),
    )
    return Node(proc, port, framed)


def admin_socket(root: Path) -> Path:
    """The admin socket of the signed node started in ``root`` (see write_config)."""
    return root / "run-signed" / "admin.sock"


def set_auth(root: Path, node: Node, *, auth: bool) -> None:
    """Switch the signed daemon's ``[auth]`` on or off by a reload (SIGHUP), and wait for it.

    The same process, instances and memory either way: the paired difference
    of its two modes is the verification alone, without the spread between
    two daemons (the A/A control shows how large that is).
    """
    proc, port = node.proc, node.port
    write_config(root, "signed", port, node.framed, signed=True, auth=auth)
    proc.send_signal(signal.SIGHUP)
    want = 401 if auth else 200  # what an unsigned request gets in that mode
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        _, statuses = trio.run(send_all, port, [raw_request(port, "quiet", None)], 1)
        if want in statuses:
            return
        time.sleep(0.05)
    raise SystemExit(f"the signed daemon did not switch auth {'on' if auth else 'off'}")


def daemon_cpu(
    ports: dict[str, tuple[int, int]],
    framed_ports: dict[str, tuple[int, int]],
    n: int,
    concurrency: int,
    rounds: int,
    switch: Callable[[bool], None],
    verify_cost: Callable[[], dict[str, Any]],
) -> dict[str, dict[str, Any]]:
    """Per target: (daemon, key, compact, the signed daemon's auth on/off or None).

    "open+hdrs" sends the signed bytes to the open daemon, which parses every
    header but verifies nothing: the HTTP cost of the extra headers. "open-b"
    is a second open daemon, unsigned: the A/A control (how far two daemons
    doing the same work differ, which bounds what a daemon-vs-daemon
    difference shows). "same:open" and "same:signed" send the same kind of
    signed bytes to the signed daemon with ``[auth]`` switched off and on
    (``switch``, a reload): one process, so their difference is verification.
    "framed:open" and "framed:signed" do the same over the framed ingress with
    pre-signed calls (the same frames either way; an open node ignores ``auth``).
    """
    results = {}
    targets: dict[str, tuple[tuple[int, int], AccessKey | None, bool, bool | None]] = {
        "open": (ports["open"], None, False, None),
        "open-b": (ports["open-b"], None, False, None),
        "open+hdrs": (ports["open"], QUIET, False, None),
        "signed": (ports["signed"], QUIET, False, True),
        "compact": (ports["signed"], QUIET, True, True),  # sign_request(..., compact=True)
        "same:open": (ports["signed"], QUIET, False, False),
        "same:signed": (ports["signed"], QUIET, False, True),
        "same:signed-b": (ports["signed"], QUIET, False, True),  # A/A of the pair above
        "framed:open": (framed_ports["signed"], QUIET, False, False),
        "framed:signed": (framed_ports["signed"], QUIET, False, True),
        "framed:signed-b": (framed_ports["signed"], QUIET, False, True),  # A/A
    }

    def send(name: str, port: int, key: AccessKey | None, count: int, compact: bool = False) -> Any:
        if name.startswith("framed:"):
            return trio.run(send_framed, port, "quiet", signed_calls("quiet", QUIET, count), 8)
        return trio.run(
            send_all,
            port,
            [raw_request(port, "quiet", key, compact=compact) for _ in range(count)],
            8,
        )

    samples: dict[str, list[tuple[float, float, list[float], dict[int, int], float]]] = {
        name: [] for name in targets
    }
    auth_on = True
    for name, ((_pid, port), key, _, _) in targets.items():  # warm up instances and caches
        send(name, port, key, 500)
    order = list(targets)
    for r in range(rounds):  # interleaved, so drift (other load, frequency) hits all alike
        # Rotated each round, so no target always runs first or last.
        for name in order[r % len(order) :] + order[: r % len(order)]:
            (pid, port), key, compact, auth = targets[name]
            if auth is not None and auth != auth_on:
                switch(auth)
                auth_on = auth
                # Settle after the reload (its own work is not the requests').
                send(name, port, key, 200)
            # Pre-signed: the client's signing is not in the measured window.
            if name.startswith("framed:"):
                calls = signed_calls("quiet", QUIET, n)
                go: Callable[[], Any] = partial(
                    trio.run, send_framed, port, "quiet", calls, concurrency
                )
            else:
                batch = [raw_request(port, "quiet", key, compact=compact) for _ in range(n)]
                go = partial(trio.run, send_all, port, batch, concurrency)
            # The daemon's own account of its verification CPU (sampled; read
            # outside the CPU window: the admin call costs the daemon too).
            cost_before = verify_cost() if auth else None
            before = cpu_ns(pid)
            t0 = time.perf_counter()
            lat, statuses = go()
            wall = time.perf_counter() - t0
            cpu = (cpu_ns(pid) - before) / n / 1e3
            direct = verify_us(cost_before, verify_cost()) if cost_before is not None else 0.0
            samples[name].append((cpu, n / wall, lat, statuses, direct))
    if not auth_on:
        switch(True)
    for name, runs in samples.items():
        lat = [x for run in runs for x in run[2]]
        totals: dict[int, int] = {}
        for run in runs:
            for code, count in run[3].items():
                totals[code] = totals.get(code, 0) + count
        results[name] = {
            "requests": n * rounds,
            "statuses": totals,
            "rps": statistics.median(run[1] for run in runs),
            "daemon_cpu_us_per_request": statistics.median(run[0] for run in runs),
            "daemon_cpu_us_runs": [run[0] for run in runs],
            "verify_us_runs": [run[4] for run in runs],
            "p50_ms": statistics.median(lat),
            "p99_ms": p(lat, 99),
        }
    return results


def clock_read_us(n: int = 20000) -> float:
    """µs one :func:`time.thread_time_ns` read costs here (what each timed sample includes)."""
    clock = time.thread_time_ns
    t0 = time.perf_counter_ns()
    for _ in range(n):
        clock()
    return (time.perf_counter_ns() - t0) / n / 1e3


def paired(runs_a: list[float], runs_b: list[float]) -> tuple[float, float, float]:
    """Median, min and max of the per-round differences a - b."""
    diffs = [a - b for a, b in zip(runs_a, runs_b, strict=True)]
    return statistics.median(diffs), min(diffs), max(diffs)


def print_verification(cpu: dict[str, dict[str, Any]], runs: dict[str, list[float]]) -> Any:
    """The verification cost three ways, side by side, per ingress."""
    clock_us = clock_read_us()
    print(
        "   verification, us of daemon CPU per request (median over rounds, min..max):\n"
        "     direct  = the daemon's own timing of 1 in 16 verifications (thread CPU time:\n"
        "               signature check of the head + SHA-256 of the body; replay cache and\n"
        "               key lookup included; each of the two steps includes one clock read,\n"
        f"               ~{clock_us:.2f} us here)\n"
        "     on-off  = one daemon, same signed bytes, [auth] on minus off (paired per round):\n"
        "               also any other cost of signed mode (tenant quotas and counters, more\n"
        "               garbage, cache effects) and the round-to-round drift of a shared machine\n"
        "     A/A     = the same target twice, auth on both times (paired): on-off's resolution"
    )
    out: dict[str, Any] = {"clock_read_us": clock_us}
    for label, on, on_b, off in (
        ("HTTP", "same:signed", "same:signed-b", "same:open"),
        ("framed", "framed:signed", "framed:signed-b", "framed:open"),
    ):
        direct = cpu[on]["verify_us_runs"] + cpu[on_b]["verify_us_runs"]
        rows = {
            "direct": (statistics.median(direct), min(direct), max(direct)),
            "on-off": paired(runs[on], runs[off]),
            "A/A": paired(runs[on_b], runs[on]),
        }
        out[label] = {
            k: dict(zip(("median", "min", "max"), v, strict=True)) for k, v in rows.items()
        }
        cells = "   ".join(f"{k} {m:5.1f} ({lo:.1f}..{hi:.1f})" for k, (m, lo, hi) in rows.items())
        print(f"   {label:<7} {cells}   target < 20 us")
    return out


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=5000, help="per target and round")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds of part 2")
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per part-3 phase")
    # 24 rounds x 3 s x 100 req/s = 7,200 samples per condition: the pooled p99 is
    # the 72nd-largest; its interval (resampling rounds) shows what it resolves.
    parser.add_argument("--noisy-rounds", type=int, default=24, help="rounds of part 3")
    # Well under what the node serves even on a loaded 2-core VM: above it the quiet
    # tenant's own queue grows and p99 measures that, not the neighbour.
    parser.add_argument("--quiet-rate", type=float, default=100, help="tenant quiet's req/s")
    parser.add_argument(
        "--flood-rate", type=float, default=2000, help="tenant noisy's offered req/s"
    )
    parser.add_argument("--flood-connections", type=int, default=32)
    # The flood is another machine's in real life: here it runs niced, so what the
    # quiet tenant's p99 measures is the node's interference, not CPU sharing with
    # the flood generator (its sent/offered counts show whether it kept its rate).
    parser.add_argument("--flood-nice", type=int, default=10, help="the flood process's nice")
    parser.add_argument(
        "--pin",
        action="store_true",
        help="part 3 as if the flood came from another machine: this bench (the quiet "
        "client) and the measured node on CPU 0, the flood and the elsewhere node on CPU 1",
    )
    parser.add_argument(
        "--conditions",
        type=lambda text: text.split(","),
        default=list(CONDITIONS),
        help=f"part 3's conditions (default all: {','.join(CONDITIONS)}); "
        f"{','.join(REQUIRED)} are needed for the verdict",
    )
    # reset: the node drops the flood's backlog at once; close: the ~5 s FIN path (README).
    parser.add_argument("--flood-exit", choices=("reset", "close"), default="reset")
    parser.add_argument("--replicates", type=int, default=2000, help="bootstrap draws")
    parser.add_argument("--parts", default="1,2,3", help="which parts to run, e.g. 2 or 1,3")
    parser.add_argument(
        "--steps",
        metavar="FILE",
        help="part 3: run the measured node under bench/loop_steps.py (records its loop passes "
        "> 0.3 ms in FILE) and print them per condition, with what quiet's slowest 1 %% hit",
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    unknown = set(args.conditions) - set(CONDITIONS)
    if unknown or not set(REQUIRED) <= set(args.conditions):
        parser.error(f"--conditions: one of {CONDITIONS}, with at least {REQUIRED}")
    if args.pin:
        if len(os.sched_getaffinity(0)) < 2:
            raise SystemExit("--pin needs two CPUs")
        os.sched_setaffinity(0, PIN_NODE)  # this bench: the quiet client (and its threads)
    report: dict[str, object] = {"cpus": os.cpu_count(), "loadavg_before": loadavg()}
    print(f"huselet bench_auth ({os.cpu_count()} CPUs, load average {loadavg()})")
    parts = set(args.parts.split(","))
    if "1" in parts:
        micro = in_process(args.requests)
        report["in_process_us"] = micro
        print("1. admission CPU per request, in process (admit + body check):")
        for name, us in micro.items():
            print(f"   {name:<14} {us:7.2f} us")
        print(
            f"   (', slept': thread CPU of the same work with a {PAUSE_S * 1e3:g} ms sleep before\n"
            "    each request, as a daemon waits in epoll: this VM charges a thread for the\n"
            "    memory it touches after a sleep, which the tight loops above do not pay)"
        )
        print(f"   signed - open = {micro['signed'] - micro['open']:.2f} us (target < 20 us)")
        print(f"   framed - open = {micro['framed'] - micro['open']:.2f} us (signed framed call)")

    root = Path(tempfile.mkdtemp(prefix="hlbd"))
    procs = {}
    try:
        names = ["open", "open-b", "signed"] if "2" in parts else ["signed"]
        if "3" in parts and "elsewhere" in args.conditions:
            names.append("alt")  # part 3's control, "elsewhere": the flood sent to another node
        for name in names:
            (root / name).mkdir()
            steps = args.steps if name == "signed" else None
            cpus = (PIN_FLOOD if name == "alt" else PIN_NODE) if args.pin else None
            procs[name] = start_daemon(
                root / name, signed=name in ("signed", "alt"), steps=steps, cpus=cpus
            )
        ports = {name: (node.proc.pid, node.port) for name, node in procs.items()}
        framed_ports = {name: (node.proc.pid, node.framed) for name, node in procs.items()}
        signed_proc, signed_port = procs["signed"].proc, procs["signed"].port

        def switch(auth: bool) -> None:
            set_auth(root / "signed", procs["signed"], auth=auth)

        admin = AdminClient(admin_socket(root / "signed"), timeout_s=30)

        def verify_cost() -> dict[str, Any]:
            return dict(admin.call("status")["admission"]["verify_cost"])

        if "2" in parts:
            cpu = daemon_cpu(
                ports,
                framed_ports,
                args.requests,
                args.concurrency,
                args.rounds,
                switch,
                verify_cost,
            )
            report["daemon"] = cpu
            print(
                f"2. daemon CPU per request, {args.requests} requests x {args.rounds} rounds, "
                f"concurrency {args.concurrency}:"
            )
            head = ("target", "cpu us/req", "req/s", "p50 ms", "p99 ms")
            print("   {:<13} {:>10} {:>8} {:>7} {:>7}  statuses".format(*head))
            for name, r in cpu.items():
                print(
                    f"   {name:<13} {r['daemon_cpu_us_per_request']:10.1f} {r['rps']:8.0f} "
                    f"{r['p50_ms']:7.3f} {r['p99_ms']:7.3f}  {r['statuses']}"
                )
            runs = {name: r["daemon_cpu_us_runs"] for name, r in cpu.items()}
            for label, a, b, note in (
                ("same:signed - same:open", "same:signed", "same:open", "verification; < 20 us"),
                ("framed:signed - framed:open", "framed:signed", "framed:open", "framed; < 20 us"),
                ("signed - open+hdrs", "signed", "open+hdrs", "verification, two daemons"),
                ("open+hdrs - open", "open+hdrs", "open", "h11 parsing the signed headers"),
                ("signed - open", "signed", "open", "all a signed request costs"),
                ("compact - open", "compact", "open", "all a compact signed request costs"),
                ("open-b - open", "open-b", "open", "A/A: two daemons, same work"),
            ):
                med, lo, hi = paired(runs[a], runs[b])
                report[label] = {"median": med, "min": lo, "max": hi}
                print(f"   {label:<27} {med:6.1f} us  (rounds {lo:.1f} .. {hi:.1f}; {note})")
            rounded = {n: [round(x, 1) for x in r] for n, r in runs.items()}
            print(f"   runs (us/req): {rounded}")
            report["verification"] = print_verification(cpu, runs)
        if "3" in parts:
            admins = {signed_port: admin}
            elsewhere = 0
            if "alt" in procs:  # a short name: Unix socket paths are short
                elsewhere = procs["alt"].port
                admins[elsewhere] = AdminClient(admin_socket(root / "alt"), timeout_s=30)

            def noisy_counts(port: int) -> tuple[int, int]:
                row = admins[port].call("status")["admission"]["tenants"].get("noisy", {})
                return int(row.get("admitted", 0)), int(row.get("throttled", 0))

            nn = noisy_neighbour(
                signed_proc.pid, signed_port, args, args.noisy_rounds, elsewhere, noisy_counts
            )
            report["noisy_neighbour"] = nn
            print_noisy(nn, args)
    finally:
        for node in procs.values():
            node.proc.terminate()
        for node in procs.values():
            node.proc.wait(30)
    report["loadavg_after"] = loadavg()
    print(f"load average after: {loadavg()}")
    if args.json:
        print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
