"""The node ⇄ central-scheduler state protocol, measured over loopback TCP.

    .venv/bin/python bench/bench_fleet.py [--events 200000] [--nodes 20] [--instances 10000]

Prints four numbers (and ``--json`` for machines):

1. **events/s** — instance state changes a node emits (``NodeStateModel`` →
   ``NodeSession``, batched with the default 50 ms delay) and a central
   scheduler *process* applies, measured until the scheduler acknowledged the
   last frame. Every change hits a different instance, so nothing coalesces:
   the figure is raw deltas, not a coalescing artefact.
2. **bytes/event** on the wire, node → scheduler, for the same run.
3. **failover** — SIGKILL of the active scheduler process until every one of
   ``--nodes`` node links is established with the standby (new epoch,
   snapshot resync): once with the default timers (standby lock poll 200 ms,
   dial backoff base 100 ms), once with lowered ones (20 ms / 20 ms).
4. **resync** — a node with ``--instances`` instance resources connecting to a
   fresh scheduler: from the TCP connect to the scheduler's atomic swap of
   the snapshot into its view (in-process, so the end is observed exactly).

The nodes here are the real ``SchedulerLink`` on a stand-in node scheduler
with no functions (their state is fed straight into the state model): the
bench measures the protocol path, not worker processes.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from huselet.central.server import CentralScheduler, CentralSettings
from huselet.config import SchedulerLinkSettings, TcpAddress
from huselet.fleet.commands import FleetCommands
from huselet.fleet.link import SchedulerLink


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class NoFunctions:
    """Stands in for the Dispatcher: the bench feeds the state model directly."""

    def __init__(self) -> None:
        self.pools: dict[str, Any] = {}
        self.on_change: Any = None
        self.function_meta: dict[str, Any] = {}


def make_link(node_id: str, ports: list[int], **kw: Any) -> SchedulerLink:
    settings = SchedulerLinkSettings(
        addresses=tuple(TcpAddress("127.0.0.1", p) for p in ports),
        node_id=node_id,
        memory_mb=4096,
        **kw,
    )
    scheduler = NoFunctions()

    def commands(on_placements: Callable[[str], None]) -> FleetCommands:
        return FleetCommands(
            None,  # type: ignore[arg-type]  # never executes a command here
            scheduler,
            None,
            known_runtimes=(),
            on_placements=on_placements,
        )

    return SchedulerLink(settings, scheduler, commands)


class CentralProcess:
    def __init__(self, name: str, state: Path, port: int, *args: str) -> None:
        self.leader = threading.Event()
        self.standby = threading.Event()
        self.leader_at = 0.0
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "huselet.central", "--id", name, "--listen",
             f"127.0.0.1:{port}", "--state-dir", str(state), "--log-level", "info", *args],
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            if '"central standby"' in line:
                self.standby.set()
            if '"central leader"' in line:
                self.leader_at = time.perf_counter()
                self.leader.set()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)


async def wait_for(
    predicate: Callable[[], bool], timeout: float = 60.0, step: float = 0.001
) -> None:
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(step)


# --- 1 + 2: events/s and bytes/event -------------------------------------------------------------


async def throughput(root: Path, events: int) -> dict[str, float]:
    port = free_port()
    # A short scheduler heartbeat so the final ack is not held back by the idle timer.
    central = CentralProcess("bench", root / "tp", port, "--heartbeat-ms", "20", "--no-fsync")
    try:
        assert central.leader.wait(20), "central did not start"
        link = make_link("bench-node", [port])
        async with trio.open_nursery() as nursery:
            await nursery.start(link.run)
            await wait_for(lambda: link.state == "established")
            replay = link.session.state.replay
            await wait_for(lambda: replay.first_seq - 1 == replay.last_seq)
            bytes_before = link.bytes_out
            changes = link.model.on_change
            states = ("starting", "idle", "busy", "idle")
            names = [f"i{i}" for i in range(10_000)]
            bodies = [{"function": "f", "state": s} for s in states]
            start = time.perf_counter()
            for n in range(events):
                changes("instance", names[n % 10_000], bodies[(n // 10_000) % 4])
                if n % 2000 == 1999:
                    await trio.sleep(0)  # let the link put frames on the wire meanwhile
            emitted = time.perf_counter() - start
            await wait_for(
                lambda: not link.session.state.batch and replay.first_seq - 1 == replay.last_seq
            )
            elapsed = time.perf_counter() - start
            sent = link.bytes_out - bytes_before
            nursery.cancel_scope.cancel()
    finally:
        central.kill()
    return {
        "events": events,
        "emit_events_per_s": events / emitted,
        "events_per_s": events / elapsed,
        "bytes_per_event": sent / events,
    }


# --- 3: failover ---------------------------------------------------------------------------------


async def failover(root: Path, nodes: int, *, lowered: bool, run: int) -> dict[str, float]:
    state = root / f"fo-{'low' if lowered else 'default'}-{run}"
    ports = [free_port(), free_port()]
    poll = ["--standby-poll-ms", "20"] if lowered else []
    active = CentralProcess("sched-a", state, ports[0], *poll)
    assert active.leader.wait(20), "active did not start"
    standby = CentralProcess("sched-b", state, ports[1], *poll)
    assert standby.standby.wait(20), "standby did not start"
    link_kw = {"backoff_base_ms": 20} if lowered else {}
    try:
        links = [make_link(f"node-{i}", ports, **link_kw) for i in range(nodes)]
        async with trio.open_nursery() as nursery:
            for link in links:
                await nursery.start(link.run)
            await wait_for(lambda: all(link.state == "established" for link in links))
            # Nodes shuffle the addresses; the standby refuses until it leads. Settle first.
            await wait_for(lambda: all(link.session.state.highest_epoch == 1 for link in links))
            start = time.perf_counter()
            active.kill()
            await wait_for(
                lambda: all(
                    link.state == "established" and link.session.state.highest_epoch == 2
                    for link in links
                )
            )
            elapsed = time.perf_counter() - start
            nursery.cancel_scope.cancel()
    finally:
        active.kill()
        standby.kill()
    return {"seconds": elapsed, "standby_leads_after": standby.leader_at - start}


def failovers(root: Path, nodes: int, *, lowered: bool, runs: int = 3) -> dict[str, Any]:
    results = [
        trio.run(lambda r=r: failover(root, nodes, lowered=lowered, run=r)) for r in range(runs)
    ]
    seconds = sorted(r["seconds"] for r in results)
    leads = sorted(r["standby_leads_after"] for r in results)
    return {"nodes": nodes, "median": seconds[len(seconds) // 2], "max": seconds[-1],
            "standby_leads_median": leads[len(leads) // 2]}  # fmt: skip


# --- 4: resync -----------------------------------------------------------------------------------


async def resync(root: Path, instances: int, repeat: int = 3) -> dict[str, float]:
    times = []
    for r in range(repeat):
        port = free_port()
        central = CentralScheduler(
            CentralSettings("bench", "127.0.0.1", port, root / f"rs{r}", fsync=False)
        )
        link = make_link("big-node", [port])
        for i in range(instances):
            link.model.on_change("instance", f"i{i}", {"function": "f", "state": "idle"})
        async with trio.open_nursery() as nursery:
            await nursery.start(central.run)
            await central.leading.wait()
            start = time.perf_counter()
            await nursery.start(link.run)
            await wait_for(lambda c=central: c.counters["snapshots"] >= 1)
            times.append(time.perf_counter() - start)
            view = central.fleet.view("big-node") if central.fleet else None
            assert view is not None and len(view) >= instances
            nursery.cancel_scope.cancel()
    return {"instances": instances, "seconds": min(times), "seconds_max": max(times)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--nodes", type=int, default=20)
    parser.add_argument("--instances", type=int, default=10_000)
    parser.add_argument("--json", action="store_true", help="also print results as JSON")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="hlbf"))
    print(f"huselet bench_fleet: loopback TCP, {os.cpu_count()} CPUs")
    tp = trio.run(throughput, root, args.events)
    print(
        f"events/s (node emits, scheduler process applies, 50 ms batching): "
        f"{tp['events_per_s']:,.0f}  (emit alone {tp['emit_events_per_s']:,.0f}/s)"
    )
    print(f"bytes/event on the wire (node -> scheduler): {tp['bytes_per_event']:.1f}")
    results: dict[str, Any] = {}
    for label, lowered in (("default timers", False), ("lowered (20 ms poll/backoff)", True)):
        fo = failovers(root, args.nodes, lowered=lowered)
        print(
            f"failover, {label}: SIGKILL -> all {fo['nodes']} nodes on the standby:"
            f" median {fo['median']:.3f} s, max {fo['max']:.3f} s"
            f" (standby leads after {fo['standby_leads_median']:.3f} s)"
        )
        results["failover_lowered" if lowered else "failover"] = fo
    rs = trio.run(resync, root, args.instances)
    print(
        f"resync of a node with {rs['instances']:,} instances: {rs['seconds'] * 1000:.0f} ms"
        f" (worst of 3: {rs['seconds_max'] * 1000:.0f} ms)"
    )
    results.update(throughput=tp, resync=rs)
    if args.json:
        print(json.dumps(results))


if __name__ == "__main__":
    main()
