"""What bench_faults.py's fault classes share: the daemon they start, the steady
load they run it under, the per-fault trial records, and the results table.

Kept apart from the scenarios so each fault class in ``bench_faults.py`` reads
as inject → detect → recover, without the plumbing.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from daemon_harness import Daemon, wait_until, write_config  # noqa: E402
from load_support import (  # noqa: E402
    SLEEPY_HANDLER,
    BackgroundLoad,
    LoadReport,
)
from starvation import CpuWait  # noqa: E402
from support import write_package  # noqa: E402

from huselet.admin.client import AdminClient  # noqa: E402

DEADLINE_S = 1.0
MARGIN_S = 1.0
HANG_DEADLINE_S = 0.3
BLOCK_MS = 600
WATCHDOG_S = 0.4
LOAD_EVENT = {"sleep": 0.02}


FUNCTIONS = f"""
[[functions]]
name = "work"
package = "pkgs/work"
handler = "main:handler"
timeout_ms = {int(DEADLINE_S * 1000)}
min_instances = 4
max_instances = 4
max_queue = 1000

[[functions]]
name = "safe"
package = "pkgs/work"
handler = "main:handler"
timeout_ms = {int(DEADLINE_S * 1000)}
min_instances = 4
max_instances = 4
max_queue = 1000
idempotent = true

[[functions]]
name = "fragile"
package = "pkgs/fragile"
handler = "main:handler"
timeout_ms = {int(DEADLINE_S * 1000)}
max_instances = 4
max_queue = 1000
"""
EXTRA = """
[admin]
debug_commands = true
"""


@dataclass
class Trial:
    window: LoadReport
    detect_s: float | None = None
    recover_s: float | None = None
    over_s: float | None = None  # past the deadline, for stuck requests
    # Hung requests that lost the margin to the host's scheduler (see starvation.py),
    # and the share of the window the daemon's loop (or the load) waited for a CPU.
    starved: int = 0
    cpu_wait: float = 0.0


@dataclass
class Row:
    name: str
    trials: list[Trial] = field(default_factory=list)

    def median(self, attr: str) -> float | None:
        values = [getattr(t, attr) for t in self.trials if getattr(t, attr) is not None]
        return statistics.median(values) if values else None

    def merged(self) -> LoadReport:
        outcomes = [o for t in self.trials for o in t.window.outcomes]
        return LoadReport(outcomes, len(outcomes))

    @property
    def starved(self) -> int:
        return sum(t.starved for t in self.trials)

    @property
    def hung(self) -> int:
        """Requests without a reply in time that the host's scheduler does not explain."""
        return int(self.merged().hung) - self.starved


# --- helpers -------------------------------------------------------------------------


def admin(d: Daemon, cmd: str, timeout_s: float = 10.0, **args: Any) -> Any:
    with AdminClient(d.admin_socket, timeout_s=timeout_s) as client:
        return client.call(cmd, **args)


def busy_instance(d: Daemon, function: str, timeout: float = 5.0) -> dict[str, Any]:
    found: list[dict[str, Any]] = []

    def look() -> bool:
        found[:] = [
            i
            for i in admin(d, "instances")
            if i["function"] == function and i["state"] == "busy" and i["pid"]
        ]
        return bool(found)

    if not wait_until(look, timeout=timeout, interval=0.002):
        raise RuntimeError(f"no busy instance of {function}")
    return found[0]


def log_after(
    d: Daemon, msg: str, after_wall: float, timeout: float = 5.0, **match: Any
) -> dict[str, Any] | None:
    """The first log entry ``msg`` after ``after_wall`` whose fields match (``ts`` in seconds)."""
    found: list[dict[str, Any]] = []

    def look() -> bool:
        # Log records carry RFC 3339 timestamps; the benches compare wall-clock
        # seconds, so each entry is handed back with ``ts`` as a float.
        entries = [{**e, "ts": datetime.fromisoformat(e["ts"]).timestamp()} for e in d.logs(msg)]
        found[:] = [
            e
            for e in entries
            if e["ts"] >= after_wall and all(e.get(k) == v for k, v in match.items())
        ]
        return bool(found)

    wait_until(look, timeout=timeout, interval=0.01)
    return found[0] if found else None


def warm(d: Daemon, function: str) -> None:
    """Wait for its warm instances (min_instances), or make a few by load."""
    BackgroundLoad(
        d.url, function, rate=50, duration=0.5, timeout_s=5, event=LOAD_EVENT
    ).start().wait()


def since(entry: dict[str, Any] | None, wall: float) -> float | None:
    return entry["ts"] - wall if entry else None


def faulted_load(
    d: Daemon,
    function: str,
    rate: float,
    repeats: int,
    window_s: float,
    inject: Callable[[], tuple[float, float, Any]],
    measure: Callable[[float, float, Any, LoadReport], Trial],
) -> list[Trial]:
    """Run the load for ``repeats`` windows; inject once at the start of each.

    ``inject`` returns (monotonic, wall) time of the fault and what it hit;
    ``measure`` gets those and the window's requests once the load is over.
    Each trial's hung requests are checked against the CPU wait of the daemon
    and the load (:mod:`starvation`): a starved host is not a hung daemon.
    """
    faults = []
    lead_in = 0.3
    with (
        BackgroundLoad(
            d.url,
            function,
            rate=rate,
            duration=lead_in + repeats * window_s,
            timeout_s=DEADLINE_S + MARGIN_S,
            event=LOAD_EVENT,
        ) as load,
        CpuWait(d.proc.pid, load.thread) as waits,
    ):
        start = time.monotonic() + lead_in
        for k in range(repeats):
            time.sleep(max(0.0, start + k * window_s - time.monotonic()))
            faults.append(inject())
        report = load.wait()
        finished = time.monotonic()
    assert report.accounted, report.summary()
    trials = []
    ends = [mono for mono, _, _ in faults[1:]] + [finished]
    for (mono, wall, what), end in zip(faults, ends, strict=True):
        trial = measure(mono, wall, what, report.finished_in(mono, end))
        trial.starved = waits.starved(trial.window.of_kind("hung"), MARGIN_S)
        trial.cpu_wait = waits.share(mono, end)
        trials.append(trial)
    return trials


def start_daemon(root: Path, env: dict[str, str] | None = None) -> Daemon:
    write_package(root, "work", SLEEPY_HANDLER)
    write_package(root, "fragile", SLEEPY_HANDLER)
    return Daemon(write_config(root, FUNCTIONS, EXTRA), env=env)


def ms(value: float | None) -> str:
    return f"{value * 1000:.1f}" if value is not None else "-"


def print_table(rows: list[Row], baseline: LoadReport, rate: float, repeats: int) -> None:
    print(
        f"huselet bench_faults: {rate:g} req/s steady load, handler 20 ms, "
        f"{repeats} repeats per fault, {os.cpu_count()} CPUs; times are medians"
    )
    head = (
        "fault",
        "detect ms",
        "recover ms",
        "over ms",
        "failed %",
        "no fault %",
        "p99 ms",
        "no fault p99",
        "hung",
        "starved",
        "cpu wait %",
    )
    fmt = "{:<11} {:>9} {:>10} {:>8} {:>9} {:>10} {:>8} {:>12} {:>5} {:>7} {:>10}"
    print(fmt.format(*head))
    base_failed = f"{baseline.failed_share * 100:.1f}"
    base_p99 = f"{baseline.latency_ms(99):.1f}"
    for row in rows:
        merged = row.merged()
        print(
            fmt.format(
                row.name,
                ms(row.median("detect_s")),
                ms(row.median("recover_s")),
                ms(row.median("over_s")),
                f"{merged.failed_share * 100:.1f}",
                base_failed,
                f"{merged.latency_ms(99):.1f}",
                base_p99,
                row.hung + merged.broken,
                row.starved,
                f"{statistics.median(t.cpu_wait for t in row.trials) * 100:.0f}",
            )
        )
    print(
        f"hung: no reply within deadline + {MARGIN_S:g} s (must be 0); starved: the same, but "
        f"the daemon's loop or the load waited >= {MARGIN_S:g} s for a CPU meanwhile (the host "
        "was overloaded: rerun on a quieter machine); cpu wait: median share of a window "
        "the daemon's loop or the load spent waiting for a CPU"
    )
    print(f"no fault: {baseline.summary()}")
    for row in rows:
        print(f"{row.name}: {row.merged().summary()}")
