"""Faults under a steady load: time to detection and to recovery per fault
class, and the share of requests that failed, beside the same load with no fault.

    .venv/bin/python bench/bench_faults.py [--quick] [--repeats K] [--rate R] [--json]

For each fault class a fresh ``huselet run`` serves a steady open-loop load
(``tests/load_support.py``: R requests/s, each handler sleeps 20 ms, client
timeout = deadline + 1 s) and the fault is injected K times, one per window.
Times are medians over the K repeats; "failed %" is over the requests sent in
the fault windows, "no fault" the same load on an undisturbed daemon. Every
request is accounted for (ok, error reply, hung, broken): "hung" must be 0.
A request without a reply in time while the daemon's event loop or the load
generator waited at least the 1 s margin for a CPU is counted "starved"
instead: the host was overloaded, not the daemon hung (``starvation.py``;
the "cpu wait %" column says how starved each class ran).

What *detect* and *recover* mean, per class (fault = the moment of injection):

- ``kill``: SIGKILL a busy instance. detect: the daemon logs the instance's
  end (pidfd); recover: its replacement is ready (``min_instances`` = max).
- ``kill idem``: the same on an ``idempotent = true`` function (retried once).
- ``sigstop``: SIGSTOP a busy instance. detect: its stuck request is answered
  504 (the deadline, 1 s, is most of it); recover: a replacement is ready.
  ``over`` is how late after the deadline the 504 came.
- ``hang``: one request whose handler sleeps 30 s, caller deadline 300 ms.
  detect: its 504; recover: a replacement is ready. ``over`` as above.
- ``crash loop``: the package is replaced with one that raises on import
  (``ctl reload``) and the running instances are killed. detect: the breaker
  opens; then the fix is written and reloaded at once; recover: the first
  success *after the fix*. Failed % here is by construction most of the window.
- daemon restart (printed below the table, no load): SIGKILL the daemon
  with warm instances, start it again on the same state dir; time to "huselet
  ready" (the recovery sweep included) and to its first reply (cold instance).
- idle heartbeat (printed below the table, no load): SIGSTOP the idle instance
  of a ``min_instances = 1`` function; time to "instance missed its heartbeat".
- ``block loop``: ``debug_block_loop`` 600 ms with ``WATCHDOG_USEC`` 400 ms.
  detect: when systemd would notice (last pet + WATCHDOG_USEC); recover: the
  first pet after the block. Requests sent during the block wait, not fail.

Orientation from issue 6: instance death detected in < 10 ms, a stuck request
freed at its deadline + < 50 ms. ``--quick`` (K = 3) takes about a minute.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

# The daemon harness and the load generator live with the tests.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from daemon_harness import Daemon, wait_until, write_config
from faultkit import (
    BLOCK_MS,
    DEADLINE_S,
    HANG_DEADLINE_S,
    LOAD_EVENT,
    MARGIN_S,
    WATCHDOG_S,
    Row,
    Trial,
    admin,
    busy_instance,
    faulted_load,
    log_after,
    print_table,
    since,
    start_daemon,
    warm,
)
from load_support import BROKEN_ON_IMPORT, SLEEPY_HANDLER, BackgroundLoad, LoadReport
from support import write_package

# --- fault classes ---------------------------------------------------------------------


def bench_kill(root: Path, rate: float, repeats: int, function: str) -> list[Trial]:
    with start_daemon(root) as d:
        warm(d, function)

        def inject() -> tuple[float, float, Any]:
            victim = busy_instance(d, function)
            mono, wall = time.monotonic(), time.time()
            os.kill(victim["pid"], signal.SIGKILL)
            return mono, wall, victim["id"]

        def measure(mono: float, wall: float, victim: Any, window: LoadReport) -> Trial:
            ended = log_after(d, "instance ended", wall, instance=victim)
            ready = log_after(
                d, "instance ready", ended["ts"] if ended else wall, function=function
            )
            return Trial(window, since(ended, wall), since(ready, wall))

        return faulted_load(d, function, rate, repeats, 1.5, inject, measure)


def bench_sigstop(root: Path, rate: float, repeats: int) -> list[Trial]:
    with start_daemon(root) as d:
        warm(d, "work")

        def inject() -> tuple[float, float, Any]:
            victim = busy_instance(d, "work")
            mono, wall = time.monotonic(), time.time()
            os.kill(victim["pid"], signal.SIGSTOP)
            return mono, wall, victim["id"]

        def measure(mono: float, wall: float, victim: Any, window: LoadReport) -> Trial:
            # 504 at the deadline, or 502 earlier if the daemon sees it frozen.
            stuck = [o for o in window.of_kind("error") if o.status in (502, 504)]
            first = min(stuck, key=lambda o: o.finished_at, default=None)
            ended = log_after(d, "instance ended", wall, instance=victim)
            ready = log_after(d, "instance ready", ended["ts"] if ended else wall, function="work")
            over = [o.latency_s - DEADLINE_S for o in stuck if o.status == 504]
            return Trial(
                window,
                first.finished_at - mono if first else None,
                since(ready, wall),
                max(over) if over else None,
            )

        return faulted_load(d, "work", rate, repeats, 2.0, inject, measure)


def bench_hang(root: Path, rate: float, repeats: int) -> list[Trial]:
    import httpx

    with start_daemon(root) as d:
        warm(d, "work")
        client = httpx.Client(base_url=d.url, timeout=HANG_DEADLINE_S + MARGIN_S)
        replies: dict[float, tuple[int, float]] = {}

        def hang(mono: float) -> None:
            r = client.post(
                "/v1/invoke/work",
                json={"sleep": 30},
                headers={"X-Huselet-Timeout-Ms": str(int(HANG_DEADLINE_S * 1000))},
            )
            replies[mono] = (r.status_code, time.monotonic())

        threads = []

        def inject() -> tuple[float, float, Any]:
            mono, wall = time.monotonic(), time.time()
            t = threading.Thread(target=hang, args=(mono,))
            t.start()
            threads.append(t)
            return mono, wall, None

        def measure(mono: float, wall: float, _: Any, window: LoadReport) -> Trial:
            status, answered = replies.get(mono, (0, 0.0))
            ended = log_after(d, "instance ended", wall, reason="request deadline passed")
            ready = log_after(d, "instance ready", ended["ts"] if ended else wall, function="work")
            detect = answered - mono if status == 504 else None
            over = detect - HANG_DEADLINE_S if detect is not None else None
            return Trial(window, detect, since(ready, wall), over)

        try:
            trials = faulted_load(d, "work", rate, repeats, 1.5, inject, measure)
        finally:
            for t in threads:
                t.join(10)
            client.close()
        return trials


def bench_crash_loop(root: Path, rate: float, repeats: int) -> list[Trial]:
    with start_daemon(root) as d:
        warm(d, "fragile")
        fixes: dict[float, float] = {}

        def inject() -> tuple[float, float, Any]:
            mono, wall = time.monotonic(), time.time()
            write_package(root, "fragile", BROKEN_ON_IMPORT)
            admin(d, "reload")
            for i in admin(d, "instances"):
                if i["function"] == "fragile" and i["pid"]:
                    with contextlib.suppress(ProcessLookupError):  # it may just have ended
                        os.kill(i["pid"], signal.SIGKILL)
            opened = log_after(d, "circuit breaker opened", wall, timeout=10, function="fragile")
            # The operator's fix, as soon as the breaker says something is wrong.
            write_package(root, "fragile", SLEEPY_HANDLER)
            fixes[mono] = time.monotonic()
            admin(d, "reload")
            return mono, wall, opened

        def measure(mono: float, wall: float, opened: Any, window: LoadReport) -> Trial:
            fixed = fixes[mono]
            first_ok = window.first_ok_sent_after(fixed)
            return Trial(
                window, since(opened, wall), first_ok.finished_at - fixed if first_ok else None
            )

        return faulted_load(d, "fragile", rate, repeats, 3.0, inject, measure)


def bench_block_loop(root: Path, rate: float, repeats: int) -> list[Trial]:
    path = root / "notify"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(0.1)
    pets: list[float] = []
    stop = threading.Event()

    def receive() -> None:
        while not stop.is_set():
            try:
                if sock.recv(4096) == b"WATCHDOG=1":
                    pets.append(time.monotonic())
            except TimeoutError:
                continue

    receiver = threading.Thread(target=receive, daemon=True)
    receiver.start()
    env = {"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": str(int(WATCHDOG_S * 1_000_000))}
    try:
        with start_daemon(root, env) as d:
            warm(d, "work")
            wait_until(lambda: len(pets) >= 2, timeout=5)

            def inject() -> tuple[float, float, Any]:
                mono, wall = time.monotonic(), time.time()
                admin(d, "debug_block_loop", timeout_s=BLOCK_MS / 1000 + 10, ms=BLOCK_MS)
                return mono, wall, None

            def measure(mono: float, wall: float, _: Any, window: LoadReport) -> Trial:
                before = [p for p in pets if p <= mono]
                after = [p for p in pets if p > mono + BLOCK_MS / 2000]
                detect = before[-1] + WATCHDOG_S - mono if before else None
                return Trial(window, detect, after[0] - mono if after else None)

            return faulted_load(d, "work", rate, repeats, 2.0, inject, measure)
    finally:
        stop.set()
        receiver.join(2)
        sock.close()


def bench_restart(root: Path, repeats: int) -> tuple[list[float], list[float]]:
    """SIGKILL the daemon with busy instances, start it again on the same state:
    seconds from the new process to "huselet ready", and to its first reply
    (a cold instance of the process runtime)."""
    to_ready, to_reply = [], []
    d = start_daemon(root)
    try:
        for _ in range(repeats):
            warm(d, "work")
            d.kill()  # SIGKILL: instances, sockets and cgroups left for the sweep
            started = time.monotonic()
            d = start_daemon(root)
            to_ready.append(time.monotonic() - started)
            with httpx.Client(base_url=d.url, timeout=10) as client:
                reply = client.post("/v1/invoke/fragile", json={})
            to_reply.append(time.monotonic() - started)
            assert reply.status_code == 200, reply.text
    finally:
        d.kill()
    return to_ready, to_reply


IDLE_FUNCTION = """
[[functions]]
name = "standby"
package = "pkgs/work"
handler = "main:handler"
min_instances = 1
max_instances = 1
"""
IDLE_HEALTH = """
[health]
heartbeat_interval_ms = 200
heartbeat_timeout_ms = 200
"""


def bench_idle_sigstop(root: Path, repeats: int) -> list[float]:
    """SIGSTOP the idle instance of a ``min_instances = 1`` function (no load):
    seconds until the heartbeat (200 ms interval, 200 ms timeout) reports it.
    Moved here from tests/dispatch/test_pool.py, which bounded it (< 1.4 s)."""
    write_package(root, "work", SLEEPY_HANDLER)
    detected = []
    ready: list[dict[str, Any]] = []
    with Daemon(write_config(root, IDLE_FUNCTION, IDLE_HEALTH)) as d:

        def one_ready() -> bool:
            ready[:] = [i for i in admin(d, "instances") if i["pid"] and i["state"] == "idle"]
            return len(ready) == 1

        for _ in range(repeats):
            if not wait_until(one_ready, timeout=30):
                raise RuntimeError("no idle standby instance")
            wall = time.time()
            os.kill(ready[0]["pid"], signal.SIGSTOP)
            missed = log_after(
                d, "instance missed its heartbeat", wall, timeout=30, instance=ready[0]["id"]
            )
            if missed is None:
                raise RuntimeError("the heartbeat did not notice a stopped idle instance")
            detected.append(missed["ts"] - wall)
    return detected


def bench_baseline(root: Path, rate: float, repeats: int) -> LoadReport:
    """The same load, same daemon configuration, no fault."""
    with start_daemon(root) as d:
        warm(d, "work")
        load = BackgroundLoad(
            d.url,
            "work",
            rate=rate,
            duration=repeats * 1.5,
            timeout_s=DEADLINE_S + MARGIN_S,
            event=LOAD_EVENT,
        )
        return load.start().wait()


# --- output -------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="3 repeats (about a minute)")
    parser.add_argument("--repeats", type=int, help="repeats per fault class (default 7)")
    parser.add_argument("--rate", type=float, default=100.0, help="requests/s (default 100)")
    parser.add_argument("--json", action="store_true", help="also print results as JSON")
    args = parser.parse_args()
    repeats = args.repeats or (3 if args.quick else 7)
    rate = args.rate

    roots: list[Path] = []

    def fresh() -> Path:
        roots.append(Path(tempfile.mkdtemp(prefix="hlbf")))
        return roots[-1]

    try:
        baseline = bench_baseline(fresh(), rate, repeats)
        rows = [
            Row("kill", bench_kill(fresh(), rate, repeats, "work")),
            Row("kill idem", bench_kill(fresh(), rate, repeats, "safe")),
            Row("sigstop", bench_sigstop(fresh(), rate, repeats)),
            Row("hang", bench_hang(fresh(), rate, repeats)),
            Row("crash loop", bench_crash_loop(fresh(), rate, repeats)),
            Row("block loop", bench_block_loop(fresh(), rate, repeats)),
        ]
        restart_ready, restart_reply = bench_restart(fresh(), repeats)
        idle_detect = bench_idle_sigstop(fresh(), repeats)
    finally:
        for root in roots:
            shutil.rmtree(root, ignore_errors=True)
    print_table(rows, baseline, rate, repeats)
    print(
        f"daemon SIGKILL → restart (no load): ready median "
        f"{statistics.median(restart_ready) * 1000:.0f} ms (max {max(restart_ready) * 1000:.0f}), "
        f"first reply median {statistics.median(restart_reply) * 1000:.0f} ms "
        f"(max {max(restart_reply) * 1000:.0f}) over {repeats} restarts"
    )
    print(
        f"idle instance SIGSTOPped → heartbeat miss (200 ms interval + 200 ms timeout): median "
        f"{statistics.median(idle_detect) * 1000:.0f} ms (max {max(idle_detect) * 1000:.0f}) "
        f"over {repeats} stops"
    )
    if args.json:
        out = {
            "rate": rate,
            "repeats": repeats,
            "no_fault": {
                "failed_share": baseline.failed_share,
                "p50_ms": baseline.latency_ms(50),
                "p99_ms": baseline.latency_ms(99),
            },
            "faults": {
                row.name: {
                    "detect_ms": [t.detect_s and t.detect_s * 1000 for t in row.trials],
                    "recover_ms": [t.recover_s and t.recover_s * 1000 for t in row.trials],
                    "over_deadline_ms": [t.over_s and t.over_s * 1000 for t in row.trials],
                    "failed_share": row.merged().failed_share,
                    "errors": dict(row.merged().errors),
                    "hung": row.hung,
                    "starved": row.starved,
                    "cpu_wait_share": [t.cpu_wait for t in row.trials],
                }
                for row in rows
            },
        }
        print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
