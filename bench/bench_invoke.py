"""Warm invocations of a no-op function: huselet (HTTP and framed ingress)
side by side with what a user would pick instead, in one run.

    .venv/bin/python bench/bench_invoke.py            # ~5 min
    .venv/bin/python bench/bench_invoke.py --quick    # ~1.5 min
    .venv/bin/python bench/bench_invoke.py --modes huselet-http,gunicorn --concurrency 32

Modes (the ``MODES`` table; add a row to compare another variant):

- ``huselet-http``   — ``POST /v1/invoke/noop`` through the daemon's HTTP ingress;
- ``huselet-framed`` — the framed ingress (``huselet.client.framed_trio``);
- ``nometrics-http`` — HTTP to a daemon with ``[metrics] enabled = false``
  (against ``huselet-http``: what metrics cost per request);
- ``signed-http``    — signed HTTP, ``[auth]`` on (verification's cost: :mod:`invoke_signed`);
- ``gunicorn``       — the same handler as a WSGI app, gunicorn with 2 sync workers;
- ``uvicorn``        — the same handler as an ASGI app, uvicorn with httptools;
- ``raw``            — no front end: msgpack frames over a Unix socket straight
  to 2 huselet workers (the floor any front end adds to);
- ``ref-http``, ``ref-framed`` (with ``--ref PATH``) — the daemon run from
  another checkout (e.g. main), for a before/after in the same interleaved run.

huselet runs with the configuration users get: default runtime and
``max_instances``, the package packed into an image on load. Every server is
started once; then, for each concurrency level, rounds run interleaved
(A B C … A B C …) and repeated ``--rounds`` times, and the table shows the
median of the rounds and their spread (max - min, for req/s). CPU columns come
from ``/proc/PID/stat`` (utime+stime) deltas over each measured window:
``daemon`` is huselet's daemon process alone, ``server`` every process
serving (daemon + workers, gunicorn master + workers, uvicorn, the raw
workers). ``sys/req`` and ``wakes/req`` count the daemon's read/write system
calls (``/proc/PID/io``) and its event loop's sleeps (voluntary context
switches of its main thread) per request: counts that a loaded machine does
not inflate, where CPU time swells with it. The load generator is this
process (trio, keep-alive, closed loop); on a 2-core machine it competes
with the servers for CPU, as a gateway on the same host would, and at the
highest levels it can be the limit itself.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent))
from invoke_signed import direct_us, print_verification, signed_config, signed_http_load
from loadgen import LoadResult, run_framed_load, run_load
from procstats import cpu_seconds, descendants, syscalls_and_wakeups
from rawlink import RawWorkers

BENCH = Path(__file__).resolve().parent
NOOP = BENCH / "functions" / "noop"
BODY = b'{"name": "bench"}'


# --- servers -------------------------------------------------------------------------


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _drain(stream: Any) -> None:
    # Keep reading a child's pipe so it never blocks on a full one.
    threading.Thread(target=lambda: [None for _ in stream], daemon=True).start()


@dataclass
class Server:
    """One running server: where to reach it and which processes serve."""

    name: str
    proc: subprocess.Popen[str] | None
    address: Any  # (host, port) for HTTP, a framed address, or RawWorkers
    pids: Callable[[], list[int]]  # every serving process
    daemon_pid: int | None = None  # huselet's daemon (CPU reported on its own)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def wait_for_port(port: int, proc: subprocess.Popen[str], what: str) -> None:
    import socket

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{what} exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"{what} did not listen on {port} within 30 s")


def start_huselet(
    root: Path,
    name: str,
    extra_config: str = "",
    function_config: str = "",
    code: Path | None = None,
) -> Server:
    """``huselet run`` with a default configuration (plus ``extra_config`` TOML, and
    ``function_config`` in the function's table).

    ``code``: run the daemon from another checkout (its ``huselet`` package
    first on the path) — a before/after comparison in one interleaved run.
    """
    port = free_port()
    # A short directory: the link socket paths under it must fit 107 bytes even for
    # the longest function name the config accepts ("huselet-nometrics" did not).
    home = root / f"h{sum(1 for _ in root.iterdir())}"
    home.mkdir()
    config = home / "bench.toml"
    config.write_text(
        f"""
[node]
state_dir = "{home}/state"
run_dir = "{home}/run"
[gateway]
http = "127.0.0.1:{port}"
framed = "127.0.0.1:0"
{extra_config}
[[functions]]
name = "noop"
package = "{NOOP}"
handler = "main:handler"
{function_config}
"""
    )
    env = dict(os.environ)
    python = sys.executable
    if code is not None:
        env["PYTHONPATH"] = str(code)
        # Its instances must run its worker too: they start `python -I -m
        # huselet.worker` with the daemon's interpreter, which ignores PYTHONPATH.
        # A checkout with its own venv (scripts/bootstrap.sh) brings one.
        if (code / ".venv" / "bin" / "python").exists():
            python = str(code / ".venv" / "bin" / "python")
        else:
            print(f"bench_invoke: {code} has no .venv: its instances run this tree's worker")
    proc = subprocess.Popen(
        [python, "-m", "huselet", "run", "--config", str(config), "--log-level", "info"],
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        # `python -m` puts the working directory first on sys.path: run from a
        # checkout's root, the "ref" daemon would import that checkout's huselet,
        # not the one in PYTHONPATH. Start it in its own checkout.
        cwd=code,
    )
    assert proc.stderr is not None
    framed = None
    deadline = time.monotonic() + 60
    for line in proc.stderr:
        if '"framed ingress listening"' in line:
            framed = json.loads(line).get("tcp")
        if '"huselet ready"' in line:
            break
        if time.monotonic() > deadline:
            raise SystemExit("daemon did not start")
    else:
        raise SystemExit(f"daemon exited with {proc.wait()}")
    _drain(proc.stderr)
    pid = proc.pid
    return Server(
        name,
        proc,
        {"http": ("127.0.0.1", port), "framed": framed, "admin": home / "run" / "admin.sock"},
        lambda: descendants(pid),
        daemon_pid=pid,
    )


def start_gunicorn(root: Path) -> Server:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-w", "2", "-k", "sync", "--chdir", str(BENCH),
         "-b", f"127.0.0.1:{port}", "--log-level", "warning", "baseline_apps:wsgi"],
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    wait_for_port(port, proc, "gunicorn")
    _drain(proc.stderr)
    pid = proc.pid
    return Server("gunicorn", proc, ("127.0.0.1", port), lambda: descendants(pid))


def start_uvicorn(root: Path) -> Server:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "--app-dir", str(BENCH), "--http", "httptools",
         "--no-access-log", "--log-level", "warning", "--port", str(port), "baseline_apps:asgi"],
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    wait_for_port(port, proc, "uvicorn")
    _drain(proc.stderr)
    pid = proc.pid
    return Server("uvicorn", proc, ("127.0.0.1", port), lambda: descendants(pid))


def start_floor(root: Path) -> Server:
    """``floor_proxy.py``: the least a Trio front end does per framed call (its CPU
    is reported as the daemon's, so the two rows compare directly)."""
    port, http_port = free_port(), free_port()
    home = root / "floor"
    proc = subprocess.Popen(
        [sys.executable, str(BENCH / "floor_proxy.py"), "--home", str(home), "--package",
         str(NOOP), "--handler", "main:handler", "--workers", "2", "--port", str(port),
         "--http-port", str(http_port)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=BENCH.parent,
    )  # fmt: skip
    assert proc.stdout is not None
    if not proc.stdout.readline().startswith("listening"):
        raise SystemExit(f"floor_proxy did not start ({proc.wait()})")
    _drain(proc.stdout)
    pid = proc.pid
    return Server(
        "floor",
        proc,
        {"framed": f"127.0.0.1:{port}", "http": ("127.0.0.1", http_port)},
        lambda: descendants(pid),
        daemon_pid=pid,
    )


# --- modes ---------------------------------------------------------------------------


Window = Callable[[str], None]  # called with "start" and "end" of the measured window
LoadFn = Callable[[Server, int, float, float, Window], Awaitable[LoadResult]]


def _shape(conc: int, duration: float, warmup: float, on_window: Window) -> dict[str, Any]:
    """The load's shape, as every load generator takes it."""
    return {"concurrency": conc, "duration": duration, "warmup": warmup, "on_window": on_window}


async def http_load(
    server: Server, conc: int, duration: float, warmup: float, on_window: Window
) -> LoadResult:
    addr = server.address["http"] if isinstance(server.address, dict) else server.address
    path = "/v1/invoke/noop" if server.daemon_pid else "/"
    return await run_load(addr[0], addr[1], path, BODY, **_shape(conc, duration, warmup, on_window))


async def framed_load(
    server: Server, conc: int, duration: float, warmup: float, on_window: Window
) -> LoadResult:
    shape = _shape(conc, duration, warmup, on_window)
    return await run_framed_load(server.address["framed"], "noop", BODY, **shape)


async def raw_load(
    server: Server, conc: int, duration: float, warmup: float, on_window: Window
) -> LoadResult:
    workers: RawWorkers = server.address
    return await workers.run_load(BODY, **_shape(conc, duration, warmup, on_window))


@dataclass(frozen=True)
class Mode:
    """One row of the comparison: which server (shared by modes that name it) and how to load it."""

    server: str
    load: LoadFn


# Servers are started once, shared by the modes that name them; a variant of huselet
# is one more SERVERS entry (its own ``extra_config``) and one more MODES row.
SERVERS: dict[str, Callable[[Path], Server]] = {
    "huselet": lambda root: start_huselet(root, "huselet"),
    # Metrics are on by default; this one shows what they cost the hot path.
    "huselet-nometrics": lambda root: start_huselet(
        root, "huselet-nometrics", "[metrics]\nenabled = false"
    ),
    # [auth] on, the function a tenant's: what verification costs (invoke_signed).
    "huselet-signed": lambda root: start_huselet(root, "huselet-signed", *signed_config(root)),
    "gunicorn": start_gunicorn,
    "uvicorn": start_uvicorn,
    "floor": start_floor,
}
MODES: dict[str, Mode] = {
    "huselet-http": Mode("huselet", http_load),
    "huselet-framed": Mode("huselet", framed_load),
    "nometrics-http": Mode("huselet-nometrics", http_load),
    "signed-http": Mode("huselet-signed", signed_http_load),
    "gunicorn": Mode("gunicorn", http_load),
    "uvicorn": Mode("uvicorn", http_load),
    "raw": Mode("raw", raw_load),
    # What any Trio process pays to move a call in and out (floor_proxy.py).
    "floor-framed": Mode("floor", framed_load),
    "floor-http": Mode("floor", http_load),
}


# --- running -------------------------------------------------------------------------


@dataclass
class Round:
    rps: float
    p50: float
    p99: float
    errors: int
    server_us: float  # CPU µs per request, every serving process
    daemon_us: float | None  # huselet's daemon alone
    # huselet's daemon: read/write system calls and event-loop wake-ups per request
    daemon_sys: float | None = None
    daemon_wakes: float | None = None


@dataclass
class Cell:
    rounds: list[Round] = field(default_factory=list)

    def median(self, attr: str) -> float:
        values = [getattr(r, attr) for r in self.rounds if getattr(r, attr) is not None]
        return statistics.median(values) if values else math.nan

    def spread(self, attr: str) -> float:
        values = [getattr(r, attr) for r in self.rounds if getattr(r, attr) is not None]
        return max(values) - min(values) if values else math.nan


async def measure(mode: Mode, server: Server, conc: int, duration: float, warmup: float) -> Round:
    box: dict[str, float] = {}

    def mark(key: str) -> None:
        box[key + "_srv"] = sum(cpu_seconds(p) for p in server.pids())
        if server.daemon_pid:
            box[key + "_daemon"] = cpu_seconds(server.daemon_pid)
            box[key + "_sys"], box[key + "_wakes"] = syscalls_and_wakeups(server.daemon_pid)

    result = await mode.load(server, conc, duration, warmup, mark)
    n = max(1, result.requests)
    daemon = sys_calls = wakes = None
    if server.daemon_pid:
        daemon = (box["end_daemon"] - box["start_daemon"]) / n * 1e6
        sys_calls = (box["end_sys"] - box["start_sys"]) / n
        wakes = (box["end_wakes"] - box["start_wakes"]) / n
    return Round(
        result.rps,
        result.p50,
        result.p99,
        result.errors,
        (box["end_srv"] - box["start_srv"]) / n * 1e6,
        daemon,
        sys_calls,
        wakes,
    )


async def run_bench(args: argparse.Namespace, servers: dict[str, Server]) -> dict[Any, Cell]:
    modes = args.modes.split(",")
    cells: dict[Any, Cell] = {}
    # Prime once at the highest level, unrecorded: huselet starts its instances
    # (up to max_instances) here, not inside the first measured round.
    for name in modes:
        mode = MODES[name]
        await measure(mode, servers[mode.server], max(args.levels), 1.0, 0.5)
    for conc in args.levels:
        for rnd in range(args.rounds):
            for name in modes:  # interleaved: A B C … then again
                mode = MODES[name]
                r = await measure(mode, servers[mode.server], conc, args.duration, args.warmup)
                cells.setdefault((name, conc), Cell()).rounds.append(r)
                print(
                    f"  c={conc:<4} round {rnd + 1}/{args.rounds} {name:<15} {r.rps:8.0f} req/s "
                    f"p50 {r.p50:7.3f} ms p99 {r.p99:8.3f} ms server {r.server_us:6.0f} µs/req",
                    flush=True,
                )
    return cells


def fmt(value: float | None, spec: str) -> str:
    return "-" if value is None or math.isnan(value) else format(value, spec)


def print_table(args: argparse.Namespace, cells: dict[Any, Cell]) -> None:
    print(
        f"\nmedian of {args.rounds} interleaved rounds, {args.duration:g} s each "
        f"(± = max - min of the rounds); {os.cpu_count()} CPUs"
    )
    # sys/req, wakes/req: the daemon's read/write system calls and loop wake-ups.
    header = ("mode", "conc", "req/s", "±", "p50 ms", "p99 ms", "err", "daemon µs", "server µs",
              "sys/req", "wakes/req")  # fmt: skip
    print("{:<15} {:>5} {:>8} {:>6} {:>8} {:>8} {:>5} {:>10} {:>10} {:>8} {:>9}".format(*header))
    for conc in args.levels:
        for name in args.modes.split(","):
            cell = cells[(name, conc)]
            errors = sum(r.errors for r in cell.rounds)
            print(
                f"{name:<15} {conc:>5} {fmt(cell.median('rps'), '.0f'):>8} "
                f"{fmt(cell.spread('rps'), '.0f'):>6} {fmt(cell.median('p50'), '.3f'):>8} "
                f"{fmt(cell.median('p99'), '.2f'):>8} {errors:>5} "
                f"{fmt(cell.median('daemon_us'), '.0f'):>10} "
                f"{fmt(cell.median('server_us'), '.0f'):>10} "
                f"{fmt(cell.median('daemon_sys'), '.2f'):>8} "
                f"{fmt(cell.median('daemon_wakes'), '.2f'):>9}"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 s rounds (~1.5 min in all)")
    parser.add_argument("--concurrency", default="1,8,32,128")
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=None, help="seconds per round")
    parser.add_argument("--warmup", type=float, default=None)
    parser.add_argument("--json", type=Path, help="write every round as JSON here")
    parser.add_argument(
        "--ref",
        type=Path,
        help="another checkout of huselet: adds modes ref-http and ref-framed (its daemon)",
    )
    args = parser.parse_args()
    if args.ref:
        ref = args.ref.resolve()
        SERVERS["huselet-ref"] = lambda root: start_huselet(root, "huselet-ref", code=ref)
        MODES["ref-http"] = Mode("huselet-ref", http_load)
        MODES["ref-framed"] = Mode("huselet-ref", framed_load)
        if args.modes == parser.get_default("modes"):
            args.modes += ",ref-http,ref-framed"
    args.levels = [int(c) for c in args.concurrency.split(",")]
    args.duration = args.duration or (1.0 if args.quick else 3.0)
    args.warmup = args.warmup if args.warmup is not None else (0.3 if args.quick else 1.0)
    unknown = set(args.modes.split(",")) - set(MODES)
    if unknown or args.rounds < 1:
        parser.error(f"unknown modes {sorted(unknown)} (known: {', '.join(MODES)})")
    root = Path(tempfile.mkdtemp(prefix="hlb"))

    async def amain() -> dict[Any, Cell]:
        servers: dict[str, Server] = {}
        try:
            for name in args.modes.split(","):
                key = MODES[name].server
                if key in servers:
                    continue
                if key == "raw":
                    raw = RawWorkers(root / "raw", NOOP, "main:handler", workers=2)
                    await raw.start()
                    servers[key] = Server("raw", None, raw, raw.pids)
                else:
                    servers[key] = await trio.to_thread.run_sync(SERVERS[key], root)
            print(
                f"bench_invoke: no-op function, modes {args.modes}, concurrency {args.concurrency},"
                f" {args.rounds} rounds x {args.duration:g} s (+{args.warmup:g} s warm-up)",
                flush=True,
            )
            cells = await run_bench(args, servers)
            args.verify_direct_us = direct_us(servers)
            return cells
        finally:
            for server in servers.values():
                if isinstance(server.address, RawWorkers):
                    await server.address.stop()
                server.stop()

    cells = trio.run(amain)
    print_table(args, cells)
    print_verification(args.modes.split(","), args.levels, cells, args.verify_direct_us)
    if args.json:
        rows = [
            {"mode": name, "concurrency": conc, "rounds": [vars(r) for r in cell.rounds]}
            for (name, conc), cell in cells.items()
        ]
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
