"""SchedulerLink against a real in-process central scheduler over loopback TCP.

Real sockets, real sessions, a real node stack (runtimes, link sockets,
scheduler, worker processes); only the scheduler processes are replaced by
CentralScheduler objects in this process so a test can stop one at will.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import msgpack
import pytest
import trio
from fleetkit import (
    RunningCentral,
    central,
    eventually,
    free_port,
    linked,
    make_link,
    placements_open,
)
from support import NodeStack, running_stack, write_package

from huselet.central.embedded import PrivateEtcd

pytestmark = pytest.mark.e2e

ECHO = "import os\ndef handler(event, context):\n    return {'pid': os.getpid()}\n"
LOCAL = [{"name": "local", "package": "pkgs/echo", "handler": "main:handler"}]


def echo_spec(root: Path) -> dict[str, str]:
    return {"name": "echo", "package": str(root / "pkgs" / "echo"), "handler": "main:handler"}


async def test_connects_reports_state_and_runs_a_deploy(short_tmp: Path) -> None:
    write_package(short_tmp, "echo", ECHO)
    async with linked(short_tmp, LOCAL, package_root=short_tmp) as (stack, nursery, c, link):
        await eventually(lambda: placements_open(c))
        assert c.api.fleet()["nodes"]["n1"]["functions"] == {"local": 0}
        reply = await c.api.deploy({"spec": echo_spec(short_tmp), "wait_s": 10})
        assert reply["status"] == {"n1": "ok"}
        result = await stack.dispatcher.invoke("echo", b"{}", "json")
        assert json.loads(result.body)["pid"] > 0
        # The scheduler's view follows the node: one idle instance of echo.
        await eventually(lambda: c.api.fleet()["nodes"]["n1"]["by_state"] == {"idle": 1})
        described = link.describe()
        assert described["epoch"] == 1 and described["commands"]["executed"] == {
            "deploy_function": 1
        }
        nursery.cancel_scope.cancel()


async def test_resumes_after_the_connection_breaks(short_tmp: Path) -> None:
    write_package(short_tmp, "echo", ECHO)
    async with linked(short_tmp, LOCAL, package_root=short_tmp) as (stack, nursery, c, link):
        await eventually(lambda: link.state == "established")
        await c.central.by_node["n1"].stream.aclose()
        await eventually(lambda: link.connects == 2 and link.state == "established")
        # The node may read its welcome before the central's task has counted the
        # connection (the welcome's bytes go out first): wait for the count too.
        await eventually(lambda: c.central.counters["connects.resume"] >= 1)
        assert c.central.counters["connects.resume"] == 1
        assert link.resyncs == 1  # only the first connection needed a snapshot
        # Changes made after the break still reach the scheduler.
        await stack.dispatcher.invoke("local", b"{}", "json")
        await eventually(lambda: c.api.fleet()["nodes"]["n1"]["instances"] == 1)
        nursery.cancel_scope.cancel()


async def test_fails_over_to_the_standby_with_a_higher_epoch(
    short_tmp: Path, etcd: PrivateEtcd
) -> None:
    write_package(short_tmp, "echo", ECHO)
    ports = [free_port(), free_port()]
    state = short_tmp / "central"
    async with (
        running_stack(short_tmp, LOCAL) as stack,
        trio.open_nursery() as nursery,
        central(nursery, state, ports[0], "sched-a", etcd=etcd.endpoint) as a,
    ):
        with trio.fail_after(30):
            await a.central.leading.wait()  # a leads before b starts campaigning
        async with central(nursery, state, ports[1], "sched-b", etcd=etcd.endpoint) as b:
            await _failover(short_tmp, stack, nursery, a, b, ports)
        nursery.cancel_scope.cancel()


async def _failover(
    short_tmp: Path,
    stack: NodeStack,
    nursery: trio.Nursery,
    a: RunningCentral,
    b: RunningCentral,
    ports: list[int],
) -> None:
    assert b.central.role == "standby"
    link = make_link(stack, ports, package_root=short_tmp)
    await nursery.start(link.run)
    await eventually(lambda: a.api.fleet()["nodes"].get("n1", {}).get("placements") == "open")
    await a.api.deploy({"spec": echo_spec(short_tmp), "wait_s": 10})
    old_epoch = a.central.epoch
    a.kill()
    with trio.fail_after(30):
        await b.central.leading.wait()
    await eventually(lambda: link.session.scheduler_id == "sched-b" and link.state == "established")
    assert link.session.state.highest_epoch == b.central.epoch > old_epoch
    # The new leader's view fills from the node's snapshot.
    await eventually(lambda: b.api.fleet()["nodes"]["n1"]["functions"] == {"echo": 1, "local": 0})
    assert b.api.fleet()["epoch"] == b.central.epoch
    # The new leader knows the deploy from etcd and sends nothing again.
    rounds = b.central.counters["reconcile_rounds"]
    await eventually(lambda: b.central.counters["reconcile_rounds"] >= rounds + 2)
    assert link.commands.executed == {"deploy_function": 1}
    assert link.commands.duplicates == 0


async def test_static_stability_when_no_scheduler_is_up(short_tmp: Path) -> None:
    write_package(short_tmp, "echo", ECHO)
    # The link knows a second address where nothing listens; the lease is short.
    node = linked(short_tmp, LOCAL, package_root=short_tmp, spare_ports=1, lease_s=0.6)
    async with node as (stack, nursery, c, link):
        await eventually(lambda: link.state == "established" and link.commands.lease_held)
        c.kill()
        # Every address refuses now: the link backs off and retries, the lease runs out...
        await eventually(
            lambda: link.errors["ConnectionRefusedError"] + link.errors["OSError"] >= 4
        )
        await eventually(lambda: link.commands.placements == "lease_expired")
        assert link.state in ("backoff", "connecting")
        # ... and the node keeps serving what it has.
        result = await stack.dispatcher.invoke("local", b"{}", "json")
        assert json.loads(result.body)["pid"] > 0
        nursery.cancel_scope.cancel()


HOSTILE = [
    ("FrameTooLarge", struct.pack(">I", 0xFFFFFFF0)),
    ("MalformedFrame", struct.pack(">I", 3) + b"\xc1\xc1\xc1"),
    ("InvalidMessage", (lambda b: struct.pack(">I", len(b)) + b)(msgpack.packb({"t": "welcome"}))),
    (
        "UnexpectedMessage",
        (lambda b: struct.pack(">I", len(b)) + b)(msgpack.packb({"t": "hb", "seq": 0, "ack": 0})),
    ),
]


@pytest.mark.parametrize(("error", "payload"), HOSTILE, ids=[h[0] for h in HOSTILE])
async def test_hostile_bytes_close_only_that_link_and_are_counted(
    short_tmp: Path, error: str, payload: bytes
) -> None:
    write_package(short_tmp, "echo", ECHO)
    bad_port = free_port()
    connections = 0

    async def hostile(stream: trio.SocketStream) -> None:
        nonlocal connections
        connections += 1
        with trio.move_on_after(5):
            await stream.receive_some(65536)  # the node's hello
            await stream.send_all(payload)
            await stream.receive_some(65536)  # wait for the node to hang up
        await stream.aclose()

    good_port = free_port()  # nothing listens there yet
    async with running_stack(short_tmp, LOCAL) as stack, trio.open_nursery() as nursery:
        listeners = await trio.open_tcp_listeners(bad_port, host="127.0.0.1")
        nursery.start_soon(trio.serve_listeners, hostile, listeners)
        link = make_link(stack, [bad_port, good_port], package_root=short_tmp)
        await nursery.start(link.run)
        await eventually(lambda: link.errors[error] >= 2)
        assert connections >= 2  # it came back after each close
        assert link.connects == 0
        result = await stack.dispatcher.invoke("local", b"{}", "json")
        assert json.loads(result.body)["pid"] > 0
        # Once a real scheduler answers at the other address, the node settles there.
        async with central(nursery, short_tmp / "central", good_port) as c:
            await c.central.leading.wait()
            await eventually(lambda: link.state == "established")
            assert link.address == f"127.0.0.1:{good_port}"
        nursery.cancel_scope.cancel()


async def test_a_graceful_stop_says_bye_shutdown(short_tmp: Path) -> None:
    write_package(short_tmp, "echo", ECHO)
    async with linked(short_tmp, LOCAL, package_root=short_tmp) as (_, nursery, c, link):
        await eventually(lambda: link.state == "established")
        await c.central.shutdown()
        await eventually(lambda: str(link.last_close).startswith("shutdown:"))
        assert not c.central.conns
        nursery.cancel_scope.cancel()
