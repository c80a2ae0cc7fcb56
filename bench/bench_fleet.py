"""The node ⇄ central-scheduler state protocol, measured over loopback TCP.

    .venv/bin/python bench/bench_fleet.py [--events 200000] [--nodes 20] [--instances 10000]
        [--ttl 2] [--deploys 200] [--skip-failover]

Prints (and ``--json`` for machines):

1. **events/s** — instance state changes a node emits (``NodeStateModel`` →
   ``NodeSession``, batched with the default 50 ms delay) and a central
   scheduler *process* applies, measured until the scheduler acknowledged the
   last frame. Every change hits a different instance, so nothing coalesces:
   the figure is raw deltas, not a coalescing artefact.
2. **bytes/event** on the wire, node → scheduler, for the same run.
   Run twice: plaintext and over mutual TLS (the cost of authenticated
   links), plus the time from TCP connect to an established link for both.
3. **failover** on a real etcd (a private member started here), two
   scheduler processes, ``--nodes`` node links: the leader is (a) SIGKILLed,
   (b) SIGSTOPped, (c) cut off from etcd (its etcd traffic goes through a
   proxy here that stops forwarding: a network partition between the leader
   and etcd, the nodes still reach it). Time until the standby leads, and
   until every node link is established with it (new epoch).
4. **deploy latency** through etcd: ``--deploys`` POST /v1/functions on the
   leader's admin API (``wait_s`` 0: answered once the txn is committed),
   p50/p99; the same against the dev-mode local journal (fsync'd) for scale.
5. **resync** — a node with ``--instances`` instance resources connecting to a
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

import httpx
import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from huselet.central.embedded import PrivateEtcd
from huselet.central.server import CentralScheduler, CentralSettings
from huselet.config import FunctionSettings, SchedulerLinkSettings, TcpAddress, parse_config
from huselet.config.trust import DeployPolicy, LinkTlsSettings
from huselet.dispatch.functions import FunctionDeployment
from huselet.dispatch.links import LinkServer
from huselet.fleet.commands import CommandFailed, FleetCommands
from huselet.fleet.link import SchedulerLink

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "bench-admin-token-0123456789"


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class NoFunctions:
    """Stands in for the Dispatcher: the bench feeds the state model directly.

    It is both what the link observes (``ObservedDispatcher``) and what the
    fleet's commands change (``FunctionDeployer``); it runs no functions, so a
    command to change them is refused with the commands' own typed error.
    """

    def __init__(self) -> None:
        self.pools: dict[str, Any] = {}
        self.function_meta: dict[str, Any] = {}

    def subscribe(self, listener: Callable[..., None]) -> None:
        pass  # no function ever changes here

    def unsubscribe(self, listener: Callable[..., None]) -> None:
        pass

    def describe_function(self, name: str) -> dict[str, Any]:
        return {}

    def deploy_function(self, fn: FunctionSettings, meta: dict[str, Any]) -> object:
        raise CommandFailed("the bench's stand-in node runs no functions", "unsupported")

    def update_function(self, fn: FunctionSettings) -> None:
        raise CommandFailed("the bench's stand-in node runs no functions", "unsupported")

    def remove_function(self, name: str) -> bool:
        return False  # nothing deployed here

    def set_quota(self, name: str, *, max_instances: int, min_instances: int) -> None:
        raise CommandFailed("the bench's stand-in node runs no functions", "unsupported")


def refuse_claim(function: str, instance_id: str, token: str) -> None:
    return None  # no worker ever connects to the stand-in node


class NoLinks(LinkServer):
    """The stand-in node's link sockets: never run, so opening one is refused, typed."""

    async def add_function(self, name: str) -> None:
        raise CommandFailed("the bench's stand-in node runs no functions", "unsupported")


def make_link(node_id: str, ports: list[int], **kw: Any) -> SchedulerLink:
    settings = SchedulerLinkSettings(
        addresses=tuple(TcpAddress("127.0.0.1", p) for p in ports),
        node_id=node_id,
        memory_mb=4096,
        **kw,
    )
    scheduler = NoFunctions()
    # A real (minimal) node config and link server, never run: no command
    # reaches these nodes in the bench, and one that did would be refused with
    # CommandFailed rather than crash the link on an AttributeError on None.
    node_dir = Path(tempfile.gettempdir()) / f"hlbf-{node_id}"
    config = parse_config(
        {"node": {"state_dir": str(node_dir / "state"), "run_dir": str(node_dir / "run")}},
        base_dir=node_dir,
    )
    links = NoLinks(config.node.run_dir, refuse_claim, max_frame=1 << 20)

    def commands(on_placements: Callable[[str], None]) -> FleetCommands:
        return FleetCommands(
            config,
            FunctionDeployment(scheduler, links),
            known_runtimes=(),
            on_placements=on_placements,
            policy=DeployPolicy(),
        )

    return SchedulerLink(settings, scheduler, commands)


class CentralProcess:
    """``huselet central`` as a child process: on ``etcd`` if given, else the dev-mode journal."""

    def __init__(
        self, name: str, state: Path, port: int, *args: str, etcd: str | None = None
    ) -> None:
        self.leader = threading.Event()
        self.standby = threading.Event()
        self.stepped_down = threading.Event()
        self.leader_at = 0.0
        self.admin_port = free_port()
        state.mkdir(parents=True, exist_ok=True)
        token = state / f"token-{name}"
        token.write_text(TOKEN)
        store = ["--etcd", etcd] if etcd else ["--state-dir", str(state), "--dev-store", "journal"]
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "huselet.central", "--id", name, "--listen",
             f"127.0.0.1:{port}", "--admin", f"127.0.0.1:{self.admin_port}",
             "--admin-token-file", str(token), "--log-level", "info", *store, *args],
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
            if '"central stepped down"' in line:
                self.stepped_down.set()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.send_signal(signal.SIGCONT)
        self.proc.wait(10)


class CuttableProxy:
    """A TCP proxy to etcd for one scheduler; :meth:`cut` partitions it from etcd.

    After the cut every byte is dropped in both directions while the
    connections stay open (a black hole, like a lost route: no FIN, no RST).
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self.is_cut = False

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(self.port, host="127.0.0.1")
        task_status.started()
        await trio.serve_listeners(self._pipe, listeners)

    async def _pipe(self, client: trio.SocketStream) -> None:
        async with client, await trio.open_tcp_stream("127.0.0.1", self.target_port) as up:

            async def copy(a: trio.SocketStream, b: trio.SocketStream) -> None:
                while data := await a.receive_some(65536):
                    if not self.is_cut:
                        await b.send_all(data)

            async with trio.open_nursery() as n:
                n.start_soon(copy, client, up)
                n.start_soon(copy, up, client)

    def cut(self) -> None:
        self.is_cut = True


async def wait_for(
    predicate: Callable[[], bool], timeout: float = 60.0, step: float = 0.001
) -> None:
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(step)


# --- 1 + 2: events/s and bytes/event -------------------------------------------------------------


def make_pki(root: Path) -> Path:
    d = root / "pki"
    script = str(ROOT / "scripts" / "fleet-pki.sh")
    subprocess.run(["sh", script, str(d), "ca"], check=True)
    subprocess.run(["sh", script, str(d), "cert", "sched", "IP:127.0.0.1"], check=True)
    subprocess.run(["sh", script, str(d), "cert", "bench-node"], check=True)
    return d


async def throughput(root: Path, events: int, tls: bool) -> dict[str, float]:
    port = free_port()
    # A short scheduler heartbeat so the final ack is not held back by the idle timer.
    args = ["--heartbeat-ms", "20", "--no-fsync"]
    link_kw: dict[str, Any] = {}
    if tls:
        d = make_pki(root / "tp-tls")
        args += ["--tls-ca", str(d / "ca.pem"), "--tls-cert", str(d / "sched.pem")]
        args += ["--tls-key", str(d / "sched.key")]
        link_kw["tls"] = LinkTlsSettings(d / "ca.pem", d / "bench-node.pem", d / "bench-node.key")
    central = CentralProcess("bench", root / ("tp-tls" if tls else "tp"), port, *args)
    try:
        assert central.leader.wait(20), "central did not start"
        link = make_link("bench-node", [port], **link_kw)
        async with trio.open_nursery() as nursery:
            t0 = time.perf_counter()
            await nursery.start(link.run)
            await wait_for(lambda: link.state == "established")
            connect_s = time.perf_counter() - t0
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
                    # Let the link put frames on the wire meanwhile.
                    await trio.lowlevel.checkpoint()
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
        "tls": tls,
        "connect_s": connect_s,
        "emit_events_per_s": events / emitted,
        "events_per_s": events / elapsed,
        "bytes_per_event": sent / events,
    }


# --- 3: failover ---------------------------------------------------------------------------------


FAILURES = ("sigkill", "sigstop", "partition")


async def failover(
    root: Path, etcd: PrivateEtcd, nodes: int, ttl: int, failure: str, run: int
) -> dict[str, float]:
    state = root / f"fo-{failure}-{run}"
    ports = [free_port(), free_port()]
    etcd_port = int(etcd.endpoint.rsplit(":", 1)[1])
    prefix = ["--etcd-prefix", f"/bench/{failure}/{run}", "--leader-ttl-s", str(ttl)]
    proxy = CuttableProxy(etcd_port)
    async with trio.open_nursery() as outer:
        await outer.start(proxy.run)
        active = CentralProcess(
            "sched-a", state, ports[0], *prefix, etcd=f"http://127.0.0.1:{proxy.port}"
        )
        # Wait in a thread: the proxy runs on this event loop.
        assert await trio.to_thread.run_sync(active.leader.wait, 20), "active did not start"
        standby = CentralProcess("sched-b", state, ports[1], *prefix, etcd=etcd.endpoint)
        assert await trio.to_thread.run_sync(standby.standby.wait, 20), "standby did not start"
        try:
            links = [
                make_link(f"node-{i}", ports, backoff_base_ms=20, handshake_timeout_ms=2000)
                for i in range(nodes)
            ]
            async with trio.open_nursery() as nursery:
                for link in links:
                    await nursery.start(link.run)
                await wait_for(lambda: all(link.state == "established" for link in links))
                epoch = links[0].session.state.highest_epoch
                await wait_for(lambda: all(lk.session.state.highest_epoch == epoch for lk in links))
                start = time.perf_counter()
                if failure == "sigkill":
                    active.kill()
                elif failure == "sigstop":
                    active.proc.send_signal(signal.SIGSTOP)
                else:
                    proxy.cut()
                await wait_for(
                    lambda: all(
                        link.state == "established" and link.session.state.highest_epoch > epoch
                        for link in links
                    )
                )
                elapsed = time.perf_counter() - start
                stepped_down = None
                if failure == "partition":
                    await trio.to_thread.run_sync(active.stepped_down.wait, 30)
                    stepped_down = active.stepped_down.is_set()
                nursery.cancel_scope.cancel()
        finally:
            active.kill()
            standby.kill()
            outer.cancel_scope.cancel()
    out = {"seconds": elapsed, "standby_leads_after": standby.leader_at - start}
    if stepped_down is not None:
        out["old_leader_stepped_down"] = float(stepped_down)
    return out


def failovers(
    root: Path, etcd: PrivateEtcd, nodes: int, ttl: int, failure: str, runs: int = 3
) -> dict[str, Any]:
    results = [trio.run(failover, root, etcd, nodes, ttl, failure, r) for r in range(runs)]
    seconds = sorted(r["seconds"] for r in results)
    leads = sorted(r["standby_leads_after"] for r in results)
    return {
        "nodes": nodes,
        "ttl": ttl,
        "median": seconds[len(seconds) // 2],
        "max": seconds[-1],
        "standby_leads_median": leads[len(leads) // 2],
        "standby_leads_max": leads[-1],
    }


# --- 4: deploy latency -----------------------------------------------------------------------


def deploy_latency(root: Path, deploys: int, etcd: PrivateEtcd | None) -> dict[str, Any]:
    port = free_port()
    label = "etcd" if etcd else "journal"
    central = CentralProcess(
        "sched", root / f"dl-{label}", port, "--etcd-prefix", "/bench/deploy",
        etcd=etcd.endpoint if etcd else None,
    )  # fmt: skip
    try:
        assert central.leader.wait(20), "central did not start"
        url = f"http://127.0.0.1:{central.admin_port}/v1/functions"
        headers = {"authorization": f"Bearer {TOKEN}"}
        times = []
        with httpx.Client(timeout=10, headers=headers) as http:
            for i in range(deploys):
                spec = {"name": f"f{i}", "handler": "m:h", "digest": "ab" * 32}
                body = {"spec": spec, "nodes": ["node-0"], "wait_s": 0}
                t0 = time.perf_counter()
                r = http.post(url, json=body)
                times.append(time.perf_counter() - t0)
                assert r.status_code == 200, r.text
    finally:
        central.kill()
    times.sort()
    return {
        "store": label,
        "deploys": deploys,
        "p50_ms": times[len(times) // 2] * 1000,
        "p99_ms": times[min(len(times) - 1, int(len(times) * 0.99))] * 1000,
    }


# --- 5: resync -----------------------------------------------------------------------------------


async def resync(root: Path, instances: int, repeat: int = 3) -> dict[str, float]:
    times = []
    for r in range(repeat):
        port = free_port()
        central = CentralScheduler(
            CentralSettings("bench", "127.0.0.1", port, root / f"rs{r}", fsync=False)
        )  # dev-mode journal: the resync path does not touch the store
        link = make_link("big-node", [port])
        for i in range(instances):
            link.model.on_change("instance", f"i{i}", {"function": "f", "state": "idle"})
        async with trio.open_nursery() as nursery:
            await nursery.start(central.run)
            await central.leading.wait()
            start = time.perf_counter()
            await nursery.start(link.run)
            await wait_for(lambda: central.counters["snapshots"] >= 1)  # noqa: B023 awaited here
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
    parser.add_argument("--ttl", type=int, default=2, help="leader lease TTL, seconds")
    parser.add_argument("--deploys", type=int, default=200)
    parser.add_argument("--runs", type=int, default=3, help="failovers per kind")
    parser.add_argument("--skip-failover", action="store_true")
    parser.add_argument("--json", action="store_true", help="also print results as JSON")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="hlbf"))
    print(f"huselet bench_fleet: loopback TCP, {os.cpu_count()} CPUs")
    results: dict[str, Any] = {}
    for tls in (False, True):
        tp = trio.run(throughput, root, args.events, tls)
        label = "mutual TLS" if tls else "plaintext"
        print(
            f"events/s ({label}; node emits, scheduler process applies, 50 ms batching): "
            f"{tp['events_per_s']:,.0f}  (emit alone {tp['emit_events_per_s']:,.0f}/s); "
            f"bytes/event {tp['bytes_per_event']:.1f}; connect -> established "
            f"{tp['connect_s'] * 1000:.1f} ms"
        )
        results["throughput_tls" if tls else "throughput"] = tp
    with PrivateEtcd(root / "etcd") as etcd:
        if not args.skip_failover:
            for failure in FAILURES:
                fo = failovers(root, etcd, args.nodes, args.ttl, failure, args.runs)
                print(
                    f"failover ({failure} of the leader, lease TTL {args.ttl} s): standby leads"
                    f" after median {fo['standby_leads_median']:.2f} s (max"
                    f" {fo['standby_leads_max']:.2f} s); all {fo['nodes']} nodes on it after"
                    f" median {fo['median']:.2f} s, max {fo['max']:.2f} s"
                )
                results[f"failover_{failure}"] = fo
        for store in (etcd, None):
            dl = deploy_latency(root, args.deploys, store)
            print(
                f"deploy latency ({dl['store']}, answered once committed): "
                f"p50 {dl['p50_ms']:.2f} ms, p99 {dl['p99_ms']:.2f} ms over {dl['deploys']}"
            )
            results[f"deploy_{dl['store']}"] = dl
    rs = trio.run(resync, root, args.instances)
    print(
        f"resync of a node with {rs['instances']:,} instances: {rs['seconds'] * 1000:.0f} ms"
        f" (worst of 3: {rs['seconds_max'] * 1000:.0f} ms)"
    )
    results.update(resync=rs)
    if args.json:
        print(json.dumps(results))


if __name__ == "__main__":
    main()
