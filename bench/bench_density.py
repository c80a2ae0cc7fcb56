"""Density: how many idle ``fork`` instances a node holds, and what they cost.

    .venv/bin/python bench/bench_density.py            # 500, 1000, 2000 instances
    .venv/bin/python bench/bench_density.py --quick    # 200, 500
    .venv/bin/python bench/bench_density.py --counts 1000 --runtime process

For each count N a fresh daemon (``huselet run``, default configuration plus
``runtime = "fork"``) serves one small function with ``min_instances =
max_instances = N``, so it starts N instances on its own. Measured:

- **start all**: from starting the daemon to N instances idle (includes the
  daemon's start and the zygote build, as an operator would wait for them);
  also split at the first idle instance (the daemon's start, the zygote build
  and one start) and the burst of the other N-1 (starts per second);
- **PSS/inst**: ``Pss`` from ``/proc/PID/smaps_rollup`` summed over every
  instance's processes, divided by N;
- **MemAvail/inst**: the drop of the host's ``MemAvailable`` from before the
  daemon started to N idle, divided by N (includes the daemon, the zygote, the
  kernel's page tables and slab — what the host really pays; noisy when other
  work runs on the host);
- **idle CPU**: the daemon's CPU time (the scheduler's per-thread account,
  ``/proc/PID/task/*/schedstat``, in ns: clock ticks are 10 ms) over ``--idle``
  seconds (default 10) with all N idle, as % of one core, twice: "early" right
  after the last instance went idle, and "settled" ``--settle`` seconds after
  it (the settle used is printed). A thread that exits inside a window takes
  its time with it, so such a window falls back to utime+stime (ticks) and is
  marked ``~``. Level 0 (``--baseline``, on by default) is the same daemon and
  function with no instance: the node's fixed idle cost;
- **invoke p50/p99**: warm HTTP invocations one at a time (concurrency 1) with
  all N idle;
- **past the limit** (``--probe-limit``): a daemon whose fork instances may
  hold at most ``nproc = 16`` processes per function uid (RLIMIT_NPROC, the
  limit that stops clone with EAGAIN) gets 32 concurrent 1-second requests:
  how many are served, and what the others get (status, reason, time).

Each level runs ``--rounds`` times (default 1; interleave several with
``--rounds 3``) and prints the median and spread. Every wait has a deadline:
a level that cannot reach N within ``--start-timeout`` reports how far it got.
Needs root (fork isolation).
"""

from __future__ import annotations

import argparse
import atexit
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_invoke import NOOP, free_port
from loadgen import run_load
from procstats import cpu_ns, cpu_seconds, descendants, minflt, pss_kb

from huselet.admin.client import AdminClient


def mem_available_kb() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1])
    raise RuntimeError("no MemAvailable in /proc/meminfo")


@dataclass
class Level:
    count: int
    reached: int
    start_s: float
    pss_kb: float
    avail_kb: float
    idle_cpu_pct: float  # settled
    early_cpu_pct: float  # right after the last start
    settle_s: float
    inexact: bool  # a window fell back to clock ticks (a thread exited in it)
    p50_ms: float
    p99_ms: float
    errors: int
    # CPU spent on the starts (from the daemon's start to N idle), per instance:
    # robust where start_s is not (a loaded host stretches wall time, not CPU).
    start_cpu: dict[str, float] | None = None
    # From the daemon's start to its first idle instance (the daemon's own start,
    # the zygote build, one start): start_s minus this is the burst itself.
    first_s: float = math.nan


class Daemon:
    def __init__(
        self,
        home: Path,
        count: int,
        runtime: str,
        extra: str = "",
        *,
        package: Path = NOOP,
        max_instances: int | None = None,
        fork_extra: str = "",
    ) -> None:
        self.home = home
        self.port = free_port()
        home.mkdir(parents=True)
        self.config = home / "density.toml"
        self.config.write_text(
            f"""
[node]
state_dir = "{home}/state"
run_dir = "{home}/run"
[gateway]
http = "127.0.0.1:{self.port}"
[runtimes.fork]
# Its own cgroup subtree: a daemon's start-up sweep kills what it finds under
# its subtree, and other daemons (tests) may run on the same host.
cgroup_parent = "huselet-bench-{os.getpid()}"
{fork_extra}
{extra}
[[functions]]
name = "tiny"
package = "{package}"
handler = "main:handler"
runtime = "{runtime}"
min_instances = {count}
max_instances = {max_instances or count}
max_queue = 10000
idle_timeout_ms = 3600000
# N starts are asked for at once: on a loaded host the last ones wait longer
# than the default 10 s, and failed starts would open the breaker.
start_timeout_ms = 60000
"""
        )
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.log = open(self.home / "daemon.log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "huselet", "run", "--config", str(self.config)],
            stderr=self.log,
            # `-m` puts the working directory first on sys.path: run from this tree,
            # or a checkout the shell happens to be in is the daemon that is measured.
            cwd=Path(__file__).resolve().parent.parent,
        )

    def idle_count(self) -> int:
        """Idle instances from the per-function summary: the poll must not be what
        slows the starts down (describing 2,000 instances ten times a second did)."""
        try:
            with AdminClient(self.home / "run" / "admin.sock", timeout_s=30) as admin:
                rows = admin.call("functions")
        except Exception:
            return 0
        return sum(int(r["instances"].get("idle", 0)) for r in rows)

    def ready(self) -> bool:
        try:
            with AdminClient(self.home / "run" / "admin.sock", timeout_s=30) as admin:
                admin.call("ping")
        except Exception:
            return False
        return True

    def idle_instances(self) -> tuple[int, list[int]]:
        try:
            with AdminClient(self.home / "run" / "admin.sock", timeout_s=30) as admin:
                rows = admin.call("instances")
        except Exception:
            return 0, []
        idle = [r for r in rows if r["state"] == "idle"]
        return len(idle), [r["pid"] for r in rows if r.get("pid")]

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(120)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def thread_ids(pid: int) -> set[str]:
    try:
        return set(os.listdir(f"/proc/{pid}/task"))
    except OSError:
        return set()


def idle_cpu(pid: int, seconds: float) -> tuple[float, bool]:
    """The daemon's CPU over ``seconds`` as % of one core; True if only to a clock tick.

    ``cpu_ns`` is exact but sums live threads only (trio's idle worker threads
    exit ~10 s after their last job): when the set of threads changed, the
    window is measured again from ``/proc/PID/stat`` (includes exited threads).
    """
    tids0, ns0, ticks0, w0 = thread_ids(pid), cpu_ns(pid), cpu_seconds(pid), time.monotonic()
    time.sleep(seconds)
    ns1, ticks1, tids1 = cpu_ns(pid), cpu_seconds(pid), thread_ids(pid)
    wall = time.monotonic() - w0
    if tids0 <= tids1:  # no thread exited (a new one starts at 0 ns: counted whole)
        return (ns1 - ns0) / 1e9 / wall * 100, False
    return (ticks1 - ticks0) / wall * 100, True


def run_level(root: Path, count: int, args: argparse.Namespace, rnd: int) -> Level:
    extra = "\n".join(args.config)
    # Level 0: the same function with no instance (max_instances 1: none started).
    daemon = Daemon(
        root / f"n{count}-r{rnd}", count, args.runtime, extra, max_instances=max(1, count)
    )
    time.sleep(1)  # let the previous level's memory come back
    avail_before = mem_available_kb()
    t0 = time.monotonic()
    daemon.start()
    assert daemon.proc is not None
    reached, deadline = 0, t0 + args.start_timeout
    first_s = math.nan
    try:
        while time.monotonic() < deadline:
            if daemon.proc.poll() is not None:
                raise SystemExit(f"daemon exited with {daemon.proc.returncode}: see {daemon.home}")
            reached = daemon.idle_count() if count else int(daemon.ready())
            if reached and math.isnan(first_s):
                first_s = time.monotonic() - t0
            if reached >= max(1, count):
                reached = count
                break
            # Finely until the first instance (it dates the burst's start), then less
            # often: the poll must not be what slows the starts down.
            time.sleep(0.2 if reached else 0.02)
        start_s = time.monotonic() - t0
        daemon_s = cpu_seconds(daemon.proc.pid)  # before describing N instances costs it more
        start_cpu = start_cpu_ms(daemon.proc.pid, daemon_s, daemon.idle_instances()[1], start_s)
        idle_at = time.monotonic()
        early_pct, early_inexact = idle_cpu(daemon.proc.pid, args.early)
        time.sleep(max(0.0, idle_at + args.settle - time.monotonic()))
        settle_s = time.monotonic() - idle_at
        reached, pids = daemon.idle_instances()
        pss = sum(pss_kb(p) for pid in pids for p in descendants(pid))
        avail_drop = avail_before - mem_available_kb()
        idle_pct, inexact = idle_cpu(daemon.proc.pid, args.idle)
        if args.profile:
            profile(daemon.proc.pid, args.profile, root / f"n{count}-r{rnd}.raw")
        load = trio.run(
            lambda: run_load(
                "127.0.0.1",
                daemon.port,
                "/v1/invoke/tiny",
                b"{}",
                concurrency=1,
                duration=args.invoke,
                warmup=0.3,
            )
        )
        n = max(1, len(pids))
        return Level(
            count,
            reached,
            start_s,
            pss / n,
            avail_drop / n,
            idle_pct,
            early_pct,
            settle_s,
            inexact or early_inexact,
            load.p50,
            load.p99,
            load.errors,
            start_cpu,
            first_s,
        )
    finally:
        daemon.stop()


def thread_ns(pid: int, tid: int) -> int:
    """One thread's CPU time in ns (its ``schedstat``); 0 if it is gone."""
    try:
        with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 0


def start_cpu_ms(
    daemon: int, daemon_s: float, instances: list[int], start_s: float
) -> dict[str, float]:
    """ms of CPU per started instance: the daemon's, the zygote's, an instance's own.

    Read when N are idle; the daemon's includes its own start-up and the
    zygote build (a few hundred ms in all, spread over N). Instances are
    the daemon's children too (CLONE_PARENT): the zygote is the child that
    is not one of them. ``loop_ms`` is the daemon's main thread alone (the
    event loop: serial, unlike its worker threads); ``loop_busy`` and
    ``zygote_busy`` are their CPU over the time to start all (1.0: that
    process was the bottleneck, if the host had a CPU free for it).
    """
    count = max(1, len(instances))
    known = set(instances)
    zygotes = [p for p in descendants(daemon) if p != daemon and p not in known]
    loop_s = thread_ns(daemon, daemon) / 1e9
    zygote_s = sum(cpu_ns(p) for p in zygotes) / 1e9
    return {
        # Pages faulted (minflt): the zygote's per start (copy-on-write after each
        # clone, mostly), and an instance's own on its way to idle.
        "zygote_minflt": round(sum(minflt(p) for p in zygotes) / count, 1),
        "instance_minflt": round(sum(minflt(p) for p in instances) / count, 1),
        "daemon_ms": round(daemon_s * 1000 / count, 3),
        "loop_ms": round(loop_s * 1000 / count, 3),
        "zygote_ms": round(zygote_s * 1000 / count, 3),
        "instance_ms": round(sum(cpu_ns(p) for p in instances) / 1e6 / count, 3),
        "loop_busy": round(loop_s / max(start_s, 1e-9), 3),
        "zygote_busy": round(zygote_s / max(start_s, 1e-9), 3),
    }


def profile(pid: int, seconds: float, out: Path) -> None:
    """py-spy the idle daemon (after the CPU windows: sampling costs the daemon CPU)."""
    pyspy = os.environ.get("PYSPY") or shutil.which("py-spy", path=Path(sys.executable).parent)
    pyspy = pyspy or shutil.which("py-spy")
    if pyspy is None:
        print("  profile: no py-spy (set PYSPY=/path/to/py-spy)", flush=True)
        return
    cmd = [pyspy, "record", "--native", "-r", "200", "-d", str(int(seconds)), "-p", str(pid)]
    subprocess.run([*cmd, "-f", "raw", "-o", str(out)], check=False, capture_output=True)
    print(f"  profile: {out}", flush=True)


SLEEPY = "import time\n\ndef handler(event, context):\n    time.sleep(1)\n    return {}\n"


def probe_limit(root: Path, args: argparse.Namespace) -> None:
    """32 concurrent slow requests to a function the host lets start ~7 instances."""
    import http.client
    from concurrent.futures import ThreadPoolExecutor

    package = root / "sleepy"
    package.mkdir()
    (package / "main.py").write_text(SLEEPY)
    daemon = Daemon(
        root / "probe", 0, "fork", package=package, max_instances=32, fork_extra="nproc = 16"
    )
    daemon.start()
    assert daemon.proc is not None

    def call(_: int) -> tuple[int, str, float]:
        t0 = time.monotonic()
        conn = http.client.HTTPConnection("127.0.0.1", daemon.port, timeout=60)
        try:
            conn.request("POST", "/v1/invoke/tiny", b"{}", {"content-type": "application/json"})
            reply = conn.getresponse()
            body = reply.read().decode(errors="replace")
            return reply.status, body[:160], time.monotonic() - t0
        except OSError as exc:
            return 0, str(exc), time.monotonic() - t0
        finally:
            conn.close()

    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                with AdminClient(daemon.home / "run" / "admin.sock") as admin:
                    admin.call("ping")
                break
            except Exception:
                time.sleep(0.2)
        with ThreadPoolExecutor(32) as pool:
            results = list(pool.map(call, range(32)))
    finally:
        daemon.stop()
    by_status: dict[int, list[tuple[str, float]]] = {}
    for status, body, seconds in results:
        by_status.setdefault(status, []).append((body, seconds))
    print("\npast the limit (nproc = 16, 32 concurrent 1 s requests):")
    for status, rows in sorted(by_status.items()):
        times = sorted(t for _, t in rows)
        print(
            f"  {status}: {len(rows)} requests, time p50 {statistics.median(times):.2f} s "
            f"max {times[-1]:.2f} s; e.g. {rows[0][0]!r}"
        )


def med(values: list[float]) -> float:
    return statistics.median(values) if values else math.nan


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="200 and 500 instances")
    parser.add_argument(
        "--counts", default=None, help='comma-separated instance counts ("" with --probe-limit)'
    )
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--runtime", default="fork")
    parser.add_argument("--start-timeout", type=float, default=120.0)
    parser.add_argument(
        "--settle", type=float, default=20.0, help="seconds from all idle to the settled window"
    )
    parser.add_argument("--idle", type=float, default=10.0, help="seconds of the settled window")
    parser.add_argument(
        "--early", type=float, default=3.0, help="seconds of the window right after all idle"
    )
    parser.add_argument(
        "--no-baseline", action="store_true", help="skip level 0 (the daemon with no instance)"
    )
    parser.add_argument("--profile", type=float, default=0.0, help="py-spy seconds after the idle")
    parser.add_argument("--invoke", type=float, default=2.0, help="seconds of warm invokes")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--probe-limit", action="store_true", help="also probe a host limit")
    parser.add_argument(
        "--config",
        action="append",
        default=[],
        help='TOML lines added to the config (e.g. "[health]" "heartbeat_interval_ms = 60000")',
    )
    args = parser.parse_args()
    default = "200,500" if args.quick else "500,1000,2000"
    counts = [int(c) for c in (default if args.counts is None else args.counts).split(",") if c]
    if counts and not args.no_baseline and 0 not in counts:
        counts.insert(0, 0)
    if args.quick:
        args.idle, args.invoke = min(args.idle, 5.0), min(args.invoke, 1.5)
    root = Path(tempfile.mkdtemp(prefix="hld"))
    # Each level stops its daemon before the next; the configs, packages, state and
    # logs are this run's alone (a few MB each: runs used to leave them behind).
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    results: dict[int, list[Level]] = {}
    print(f"bench_density: runtime {args.runtime}, counts {counts}, {args.rounds} round(s)")
    for rnd in range(args.rounds):
        for count in counts:  # interleaved across rounds
            level = run_level(root, count, args, rnd)
            results.setdefault(count, []).append(level)
            print(f"  round {rnd + 1}: {json.dumps(vars(level))}", flush=True)
    header = ("N", "reached", "start s", "PSS/inst KB", "MemAvail/inst KB", "early CPU %",
              "settled CPU %", "p50 ms", "p99 ms", "errors")  # fmt: skip
    print(
        f"(CPU % of one core: early = {args.early:g} s right after all idle, settled = "
        f"{args.idle:g} s from {args.settle:g} s after; ~ = to a clock tick)"
    )
    print("\n{:>5} {:>7} {:>8} {:>11} {:>16} {:>11} {:>13} {:>7} {:>7} {:>6}".format(*header))
    for count, levels in results.items():

        def m(attr: str, levels: list[Level] = levels) -> float:
            return med([getattr(lv, attr) for lv in levels])

        mark = "~" if any(lv.inexact for lv in levels) else ""

        print(
            f"{count:>5} {min(lv.reached for lv in levels):>7} {m('start_s'):>8.2f} "
            f"{m('pss_kb'):>11.0f} {m('avail_kb'):>16.0f} "
            f"{mark + format(m('early_cpu_pct'), '.2f'):>11} "
            f"{mark + format(m('idle_cpu_pct'), '.2f'):>13} "
            f"{m('p50_ms'):>7.2f} {m('p99_ms'):>7.2f} {sum(lv.errors for lv in levels):>6}"
        )
    print(
        "\nCPU per started instance (ms): daemon (of it the event loop) / zygote / the "
        "instance itself; busy = CPU / time to start all, event loop and zygote"
    )
    for count, levels in results.items():
        cpu = [lv.start_cpu or {} for lv in levels]
        keys = ("daemon_ms", "loop_ms", "zygote_ms", "instance_ms", "loop_busy", "zygote_busy",
                "zygote_minflt", "instance_minflt")  # fmt: skip
        parts = [med([c.get(k, math.nan) for c in cpu]) for k in keys]
        print(
            f"{count:>5} {parts[0]:>8.2f} ({parts[1]:.2f}) {parts[2]:>8.2f} {parts[3]:>8.2f}"
            f"   busy {parts[4]:.2f} / {parts[5]:.2f}"
            f"   minflt per start: zygote {parts[6]:.1f}, instance {parts[7]:.1f}"
        )
    print("\nthe burst: first instance idle at (s) / the other N-1 starts in (s) / starts per s")
    for count, levels in results.items():
        if count > 1:
            first = med([lv.first_s for lv in levels])
            burst = med([lv.start_s - lv.first_s for lv in levels])
            print(f"{count:>5} {first:>8.2f} {burst:>8.2f} {(count - 1) / max(burst, 1e-9):>8.0f}")
    if args.rounds > 1:
        print("(medians of the rounds)")
    if args.probe_limit:
        probe_limit(root, args)
    if args.json:
        args.json.write_text(json.dumps({c: [vars(lv) for lv in ls] for c, ls in results.items()}))


if __name__ == "__main__":
    main()
