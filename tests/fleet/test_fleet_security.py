"""Who may talk to a node, and what it accepts: mutual TLS, the deploy policy, fencing
that survives a restart. Real sockets, a real node stack, real certificates
(made with scripts/fleet-pki.sh, i.e. openssl)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import msgpack
import pytest
import trio
from fleetkit import central, eventually, free_port, linked, make_link, placements_open
from support import running_stack, write_package

from huselet.config.trust import LinkTlsSettings
from huselet.tls import server_context

pytestmark = pytest.mark.e2e

ECHO = "def handler(event, context):\n    return {'ok': True}\n"
LOCAL = [{"name": "local", "package": "pkgs/echo", "handler": "main:handler"}]
PKI = Path(__file__).resolve().parents[2] / "scripts" / "fleet-pki.sh"


def pki(root: Path) -> Path:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    d = root / "pki"
    subprocess.run(["sh", str(PKI), str(d), "ca"], check=True)
    subprocess.run(["sh", str(PKI), str(d), "cert", "sched", "IP:127.0.0.1"], check=True)
    subprocess.run(["sh", str(PKI), str(d), "cert", "n1"], check=True)
    other = root / "other"
    subprocess.run(["sh", str(PKI), str(other), "ca"], check=True)
    subprocess.run(["sh", str(PKI), str(other), "cert", "n1"], check=True)
    return d


async def test_node_links_need_a_certificate_of_the_fleet_ca(short_tmp: Path) -> None:
    d = pki(short_tmp)
    write_package(short_tmp, "echo", ECHO)
    port = free_port()
    tls = server_context(d / "ca.pem", d / "sched.pem", d / "sched.key")
    good = LinkTlsSettings(d / "ca.pem", d / "n1.pem", d / "n1.key")
    # Trusts the fleet CA, but presents a certificate of another CA.
    forged = LinkTlsSettings(d / "ca.pem", short_tmp / "other/n1.pem", short_tmp / "other/n1.key")
    async with (
        running_stack(short_tmp, LOCAL) as stack,
        trio.open_nursery() as nursery,
        central(nursery, short_tmp / "central", port, tls=tls) as c,
    ):
        await c.central.leading.wait()
        # A plaintext peer speaking the protocol gets nowhere: no HELLO is read.
        with trio.fail_after(30):
            raw = await trio.open_tcp_stream("127.0.0.1", port)
            hello = msgpack.packb({"t": "hello", "proto": 1, "node_id": "intruder"})
            await raw.send_all(len(hello).to_bytes(4, "big") + hello)
            answer = b""
            with trio.move_on_after(5):
                while chunk := await raw.receive_some(4096):
                    answer += chunk
            await raw.aclose()
        assert b"welcome" not in answer
        for bad in (None, forged):
            link = make_link(stack, [port], node_id="intruder", tls=bad)
            async with trio.open_nursery() as attempt:
                await attempt.start(link.run)
                await eventually(
                    lambda link=link: link.connects == 0 and link.rotation.failures >= 2
                )
                attempt.cancel_scope.cancel()
        assert "intruder" not in c.central.by_node and c.central.fleet is not None
        assert "intruder" not in c.central.fleet.records
        assert c.central.counters["handshake_failed.BrokenResourceError"] >= 3

        link = make_link(stack, [port], package_root=short_tmp, tls=good)
        await nursery.start(link.run)
        await eventually(lambda: placements_open(c))
        assert link.describe()["tls"] is True
        reply = await c.api.deploy(
            {
                "spec": {
                    "name": "echo",
                    "package": str(short_tmp / "pkgs/echo"),
                    "handler": "main:handler",
                },
                "wait_s": 10,
            }
        )
        assert reply["status"] == {"n1": "ok"}
        nursery.cancel_scope.cancel()


async def test_a_node_refuses_a_spec_outside_its_policy(short_tmp: Path) -> None:
    write_package(short_tmp, "echo", ECHO)
    pkgs = short_tmp / "pkgs"
    async with linked(short_tmp, LOCAL, package_root=pkgs) as (stack, nursery, c, link):
        await eventually(lambda: placements_open(c))
        bad = [
            ({"name": "etc", "package": "/etc", "handler": "m:h"}, "package_roots"),
            ({"name": "big", "package": str(short_tmp / "pkgs/echo"), "handler": "main:handler",
              "memory_mb": 4097}, "memory_mb"),
            ({"name": "many", "package": str(short_tmp / "pkgs/echo"), "handler": "main:handler",
              "max_instances": 1000}, "max_instances"),
        ]  # fmt: skip
        for spec, rule in bad:
            reply = await c.api.deploy({"spec": spec, "nodes": ["n1"], "wait_s": 10})
            assert reply["status"] == {"n1": "failed"}, reply
            results = [r for r in c.central.results.values() if r["node"] == "n1"]
            assert results[-1]["status"] == "error"
            assert results[-1]["result"]["error"] == "policy", results[-1]
            assert rule in results[-1]["result"]["message"]
        # A symlink below the root that points outside it is outside too.
        (short_tmp / "pkgs" / "sneaky").symlink_to("/etc")
        spec = {"name": "sneaky", "package": str(short_tmp / "pkgs/sneaky"), "handler": "m:h"}
        reply = await c.api.deploy({"spec": spec, "nodes": ["n1"], "wait_s": 10})
        assert reply["status"] == {"n1": "failed"}
        assert set(stack.dispatcher.pools) == {"local"}  # nothing was applied
        assert link.commands.failed["policy"] == 4
        nursery.cancel_scope.cancel()


async def test_a_restarted_node_refuses_the_epochs_it_left_behind(short_tmp: Path) -> None:
    write_package(short_tmp, "echo", ECHO)
    epoch_file = short_tmp / "fleet-epoch"
    new_state, old_state = short_tmp / "new", short_tmp / "old"
    new_state.mkdir()
    (new_state / "epoch").write_text("4\n")  # the dev-mode lock hands out 5 next
    new_port, old_port = free_port(), free_port()
    async with running_stack(short_tmp, LOCAL) as stack, trio.open_nursery() as nursery:
        async with central(nursery, new_state, new_port, "sched-new") as new:
            await new.central.leading.wait()
            assert new.central.epoch == 5
            link = make_link(stack, [new_port], epoch_file=epoch_file)
            async with trio.open_nursery() as inner:
                await inner.start(link.run)
                await eventually(lambda: placements_open(new))
                await new.api.node_command("n1", "drain", {"wait_s": 10})
                await eventually(lambda: link.epochs.persisted == 5)
                inner.cancel_scope.cancel()
        assert epoch_file.read_text().strip() == "5"
        # "Restart" the node (a fresh link: new boot) and meet a scheduler of epoch 1.
        async with central(nursery, old_state, old_port, "sched-old") as old:
            await old.central.leading.wait()
            assert old.central.epoch == 1
            restarted = make_link(stack, [old_port], epoch_file=epoch_file)
            assert restarted.session.state.highest_epoch == 5
            await nursery.start(restarted.run)
            # Its HELLO says epoch 5: the stale scheduler is told so and never welcomes it.
            await eventually(lambda: "stale_epoch" in str(restarted.last_close))
            await eventually(lambda: restarted.rotation.failures >= 2)
            assert restarted.connects == 0 and restarted.commands.executed == {}
        nursery.cancel_scope.cancel()
