"""End to end: three real ``huselet run`` daemons, a real etcd, and two
``python -m huselet.central`` processes on loopback (one leads, one stands by).

One flow, in phases: deploy through the scheduler and invoke on every node;
SIGKILL — or SIGSTOP — the leader in the middle of a burst of deploys (the
standby takes over with a higher epoch once the leader's lease runs out, the
nodes reconnect and resync, every acknowledged deploy lands exactly once);
a SIGSTOPped leader that resumes steps down, and a deploy posted to it is
refused and never reaches a node; compare the scheduler's view with what each
node says about itself; SIGKILL a node and restart it (its state converges).
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from daemon_harness import Daemon, wait_until, write_config
from fleet_harness import Central, scheduler_table
from support import write_package

from huselet.central.embedded import PrivateEtcd

pytestmark = pytest.mark.e2e

ECHO = """
import os
def handler(event, context):
    return {"pid": os.getpid(), "function": context.function_name}
"""
NODES = ["node-1", "node-2", "node-3"]
BURST = 12
TTL_S = 2


@pytest.fixture
def root(short_tmp: Path) -> Path:
    return short_tmp


def start_node(root: Path, node_id: str, ports: list[int]) -> Daemon:
    node_root = root / node_id
    node_root.mkdir(exist_ok=True)
    extra = scheduler_table(
        node_id,
        ports,
        backoff_base_ms=50,
        backoff_max_ms=500,
        batch_delay_ms=20,
        handshake_timeout_ms=2000,
        package_roots=[str(root / "pkgs")],
    )
    return Daemon(write_config(node_root, "", extra=extra))


def spec(root: Path, name: str) -> dict[str, Any]:
    package = str(root / "pkgs" / "echo")
    return {"name": name, "package": package, "handler": "main:handler", "memory_mb": 64}


def leader_of(centrals: list[Central]) -> Central:
    for c in centrals:
        if c.proc.poll() is None:
            try:
                if c.get("/v1/health")["role"] == "leader":
                    return c
            except httpx.HTTPError:
                pass
    raise AssertionError("no leader")


def deploy_burst(root: Path, centrals: list[Central], posted: threading.Event, out: dict) -> None:
    """Post BURST deploys, like an operator would: retry on the other scheduler on failure."""
    target = 0
    for i in range(BURST):
        deadline = time.monotonic() + 30
        while True:
            try:
                # Placed explicitly: a node that is reconnecting right now still gets it.
                body = {"spec": spec(root, f"f{i}"), "nodes": NODES}
                r = centrals[target].post("/v1/functions", body, timeout=5)
                if r.status_code == 200:
                    out[f"f{i}"] = r.json()
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                out["error"] = f"f{i} was never accepted"
                return
            target = 1 - target  # the other one may be (or become) the leader
            time.sleep(0.05)
        if i == BURST // 3:
            posted.set()


def node_truth(d: Daemon) -> tuple[set[str], set[str]]:
    """Functions and instance ids as the node itself reports them (huselet ctl)."""
    functions = {f["name"] for f in d.status()["functions"]}
    out = d.ctl("instances", "--json")
    assert out.returncode == 0, out.stderr
    instances = {i["id"] for i in json.loads(out.stdout)}
    return functions, instances


def scheduler_truth(central: Central, node_id: str) -> tuple[set[str], set[str]]:
    view = central.get(f"/v1/nodes/{node_id}")["resources"]
    functions = {name for kind, name, _, _ in view if kind == "function"}
    instances = {name for kind, name, _, _ in view if kind == "instance"}
    return functions, instances


def converged(central: Central, daemons: dict[str, Daemon], expected: set[str]) -> bool:
    fleet = central.get("/v1/fleet")
    for node_id, d in daemons.items():
        node = fleet["nodes"].get(node_id)
        if node is None or not node["connected"] or node["pending_commands"]:
            return False
        if set(node["functions"]) != expected:
            return False
        if node_truth(d) != scheduler_truth(central, node_id):
            return False
    return True


def diagnose(central: Central, daemons: dict[str, Daemon], expected: set[str]) -> str:
    fleet = central.get("/v1/fleet")
    lines = [f"counters {fleet['counters']}"]
    for node_id, d in daemons.items():
        node = fleet["nodes"].get(node_id, {})
        lines.append(
            f"{node_id}: connected={node.get('connected')} pending={node.get('pending_commands')}"
            f" missing={expected - set(node.get('functions', {}))}"
            f" node={node_truth(d)} sched={scheduler_truth(central, node_id)}"
            f" link={link(d)}"
        )
    return "\n".join(lines)


def on_new_leader(info: dict[str, Any], epoch: int) -> bool:
    """The node's link is established with the standby that took over, at its epoch."""
    return bool(
        info["state"] == "established"
        and info["epoch"] == epoch
        and info["scheduler_id"] == "sched-b"
    )


def link(d: Daemon) -> dict[str, Any]:
    out = d.ctl("scheduler", "--json")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)  # type: ignore[no-any-return]


def sched_link_health(d: Daemon) -> dict[str, Any]:
    out = d.ctl("health", "--json")
    assert out.returncode == 0, out.stderr
    loops = {loop["loop"]: loop for loop in json.loads(out.stdout)["loops"]}
    return loops["scheduler_link"]  # type: ignore[no-any-return]


@pytest.mark.parametrize("failure", ["sigkill", "sigstop"])
def test_fleet_deploy_failover_and_node_restart(
    root: Path, etcd: PrivateEtcd, failure: str
) -> None:
    write_package(root, "echo", ECHO)
    state = root / "central"
    timers = ["--heartbeat-ms", "200", "--lease-ms", "2000", "--leader-ttl-s", str(TTL_S)]
    timers += ["--reconcile-ms", "200"]
    a = Central("sched-a", state, *timers, etcd=etcd.endpoint)
    assert a.leader.wait(20)
    b = Central("sched-b", state, *timers, etcd=etcd.endpoint)
    centrals = [a, b]
    ports = [a.port, b.port]
    daemons: dict[str, Daemon] = {}
    try:
        for node_id in NODES:
            daemons[node_id] = start_node(root, node_id, ports)
        # --- phase 1: deploy through the scheduler, invoke on every node -----------------
        assert wait_until(
            lambda: (
                all(n.get("placements") == "open" for n in a.get("/v1/fleet")["nodes"].values())
                and len(a.get("/v1/fleet")["nodes"]) == 3
            ),
            timeout=15,
        )
        r = a.post("/v1/functions", {"spec": spec(root, "echo"), "wait_s": 20})
        assert r.status_code == 200, r.text
        assert r.json()["status"] == {n: "ok" for n in NODES}
        for d in daemons.values():
            reply = d.invoke("echo")
            assert reply.status_code == 200, reply.text
            assert reply.json()["function"] == "echo"

        # --- phase 2: SIGKILL the active scheduler mid-burst ------------------------------
        posted = threading.Event()
        results: dict[str, Any] = {}
        poster = threading.Thread(target=deploy_burst, args=(root, centrals, posted, results))
        poster.start()
        assert posted.wait(30)
        failed_at = time.monotonic()
        if failure == "sigkill":
            a.kill()
        else:
            a.pause()
        # The standby leads once the leader's lease ran out: about TTL_S, at most
        # 2 x TTL_S on an idle machine; the deadline here is generous for loaded CI.
        assert b.leader.wait(60), "\n".join(b.lines[-20:])
        took = time.monotonic() - failed_at
        print(f"{failure}: the standby leads after {took:.2f} s (TTL {TTL_S} s)")
        if failure == "sigstop":
            a.resume()
            # The resumed leader finds its lease expired and steps down at once ...
            assert a.stepped_down.wait(60), "\n".join(a.lines[-20:])
            # ... and what it is asked now is refused: it never reaches a node.
            late = a.post("/v1/functions", {"spec": spec(root, "late"), "nodes": NODES})
            assert late.status_code == 503, late.text
            assert late.json()["error"] in ("standby", "not_leader")
        poster.join(60)
        assert "error" not in results, results
        # Every acknowledged deploy is there, and nothing else.
        expected = {"echo", *(f"f{i}" for i in range(BURST))}
        assert set(results) == expected - {"echo"}
        assert wait_until(lambda: converged(b, daemons, expected), timeout=60), diagnose(
            b, daemons, expected
        )
        epoch = b.get("/v1/health")["epoch"]
        assert epoch == b.epochs[-1] > a.epochs[0]
        for node_id, d in daemons.items():
            # Waited for, not sampled once: on a loaded machine a link may be
            # between two connections (a missed heartbeat) at any given instant.
            assert wait_until(lambda d=d: on_new_leader(link(d), epoch), timeout=60), link(d)
            info = link(d)
            commands = info["commands"]
            # Nothing applied twice: one execution per function, no duplicate ids or versions.
            assert commands["duplicates"] == 0 and commands["duplicate_applies"] == 0
            assert commands["executed"] == {"deploy_function": BURST + 1}, (node_id, commands)
            assert commands["deployed"] == {name: 1 for name in expected}
            assert d.invoke(f"f{BURST - 1}").status_code == 200
            # The link's health loop sees the new scheduler (it samples once a second).
            assert wait_until(
                lambda d=d: sched_link_health(d)["detail"].startswith("established with"), timeout=5
            ), sched_link_health(d)
            assert sched_link_health(d)["state"] == "ok"

        if failure == "sigstop":
            return  # phase 3 does not depend on how the scheduler failed
        # --- phase 3: SIGKILL a node and restart it -----------------------------------------
        victim = daemons["node-2"]
        old_boot = link(victim)["boot_id"]
        victim.kill()
        daemons["node-2"] = Daemon(victim.config)
        assert wait_until(lambda: converged(b, daemons, expected), timeout=30), diagnose(
            b, daemons, expected
        )
        info = link(daemons["node-2"])
        assert info["boot_id"] != old_boot
        assert b.get("/v1/fleet")["nodes"]["node-2"]["boot_id"] == info["boot_id"]
        # It re-deployed from its own disk; the scheduler had nothing to send.
        assert info["commands"]["executed"] == {}
        assert daemons["node-2"].invoke("f0").status_code == 200
    finally:
        for d in daemons.values():
            d.kill()
        for c in centrals:
            c.kill()
