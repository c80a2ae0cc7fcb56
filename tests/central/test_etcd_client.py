"""The etcd JSON-gateway client against a real etcd member."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import trio

from huselet.central.embedded import PrivateEtcd, etcd_binary, free_port
from huselet.central.etcd import (
    Compare,
    CompareResult,
    EtcdClient,
    EtcdCompacted,
    EtcdUnavailable,
    EventType,
    LeaseNotFound,
    Op,
    Target,
)
from huselet.tls import client_context


async def test_range_put_delete_and_guarded_txn(etcd: PrivateEtcd) -> None:
    async with EtcdClient([etcd.endpoint]) as c:
        rev = await c.put(b"/t/a", b"1")
        await c.put(b"/t/b", b"2")
        await c.put(b"/u", b"x")
        kvs, now = await c.range(b"/t/", prefix=True)
        assert [(kv.key, kv.value) for kv in kvs] == [(b"/t/a", b"1"), (b"/t/b", b"2")]
        assert now >= rev + 2 and kvs[0].create_revision == rev
        guard = Compare(b"/t/a", Target.CREATE, CompareResult.EQUAL, rev)
        ok = await c.txn([guard], [Op.put(b"/t/c", b"3")], [Op.get(b"/t/a")])
        assert ok.succeeded and ok.revision > now
        stale = Compare(b"/t/a", Target.CREATE, CompareResult.EQUAL, rev + 100)
        refused = await c.txn([stale], [Op.put(b"/t/d", b"4")], [Op.get(b"/t/a")])
        assert not refused.succeeded
        assert refused.ranges()[0][0].value == b"1"
        assert await c.get(b"/t/d") is None
        assert await c.delete(b"/t/", prefix=True) == 3
        assert await c.get(b"/u") is not None


async def test_leases_expire_and_revoke(etcd: PrivateEtcd) -> None:
    async with EtcdClient([etcd.endpoint]) as c:
        lease, ttl = await c.lease_grant(2)
        assert ttl >= 2
        await c.put(b"/l", b"v", lease=lease)
        assert await c.lease_keepalive(lease) >= 2
        await c.lease_revoke(lease)
        assert await c.get(b"/l") is None  # revoking deletes the keys bound to it
        with pytest.raises(LeaseNotFound):
            await c.lease_keepalive(lease)


async def test_watch_resumes_from_the_last_revision_and_reports_compaction(
    etcd: PrivateEtcd,
) -> None:
    async with EtcdClient([etcd.endpoint]) as c:
        start = await c.put(b"/w/0", b"x")
        seen: list[tuple[EventType, bytes]] = []
        got_four = trio.Event()

        async def watcher() -> None:
            async for events in c.watch(b"/w/", prefix=True, start_revision=start):
                seen.extend((e.type, e.kv.key) for e in events)
                if len(seen) >= 4:
                    got_four.set()
                    return

        async with trio.open_nursery() as nursery:
            nursery.start_soon(watcher)
            await c.put(b"/w/1", b"y")
            await c.delete(b"/w/0")
            await c.put(b"/w/2", b"z")
            with trio.fail_after(30):
                await got_four.wait()
        assert seen == [
            (EventType.PUT, b"/w/0"),
            (EventType.PUT, b"/w/1"),
            (EventType.DELETE, b"/w/0"),
            (EventType.PUT, b"/w/2"),
        ]
        last = await c.put(b"/w/3", b"q")
        await c.compact(last)
        with pytest.raises(EtcdCompacted):
            async for _ in c.watch(b"/w/", prefix=True, start_revision=start):
                pass


async def test_unreachable_endpoint_is_a_typed_error_within_the_timeout() -> None:
    async with EtcdClient([f"http://127.0.0.1:{free_port()}"], timeout=0.5) as c:
        with pytest.raises(EtcdUnavailable):
            await c.put(b"k", b"v")


async def test_a_second_endpoint_is_used_when_the_first_is_down(etcd: PrivateEtcd) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    async with EtcdClient([dead, etcd.endpoint], timeout=1.0) as c:
        await c.put(b"k", b"v")
        assert (await c.get(b"k")) is not None


async def test_etcd_over_tls_with_a_client_certificate(short_tmp: Path) -> None:
    if etcd_binary() is None or shutil.which("openssl") is None:
        pytest.skip("etcd or openssl is not installed")
    pki = short_tmp / "pki"
    script = str(Path(__file__).resolve().parents[2] / "scripts" / "fleet-pki.sh")
    subprocess.run(["sh", script, str(pki), "ca"], check=True)
    subprocess.run(["sh", script, str(pki), "cert", "etcd", "IP:127.0.0.1"], check=True)
    subprocess.run(["sh", script, str(pki), "cert", "sched"], check=True)
    ca = pki / "ca.pem"
    with PrivateEtcd(short_tmp / "data", tls=(ca, pki / "etcd.pem", pki / "etcd.key")) as etcd:
        assert etcd.endpoint.startswith("https://")
        tls = client_context(ca, pki / "sched.pem", pki / "sched.key")
        async with EtcdClient([etcd.endpoint], tls=tls) as c:
            await c.put(b"k", b"v")
            assert (await c.get(b"k")) is not None
        # Without a client certificate etcd refuses the connection.
        async with EtcdClient([etcd.endpoint], tls=client_context(ca), timeout=1.0) as c:
            with pytest.raises(EtcdUnavailable):
                await c.put(b"k", b"w")


async def test_a_watch_rides_out_an_etcd_restart_without_losing_or_repeating(
    etcd: PrivateEtcd,
) -> None:
    async with EtcdClient([etcd.endpoint], timeout=1.0) as c:
        start = await c.put(b"/r/a", b"1")
        seen: list[bytes] = []
        done = trio.Event()

        async def watcher() -> None:
            async for events in c.watch(b"/r/", prefix=True, start_revision=start):
                seen.extend(e.kv.key for e in events)
                if seen[-1:] == [b"/r/d"]:
                    done.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(watcher)
            await c.put(b"/r/b", b"2")
            with trio.fail_after(30):
                while len(seen) < 2:
                    await trio.sleep(0.01)
            await trio.to_thread.run_sync(etcd.stop)  # the stream breaks
            await trio.to_thread.run_sync(etcd.start)  # same ports, same data
            with trio.fail_after(30):
                while True:  # a member that just started may still say "unavailable"
                    try:
                        await c.put(b"/r/c", b"3")
                        break
                    except EtcdUnavailable:
                        await trio.sleep(0.05)
            await c.put(b"/r/d", b"4")  # a repeated event would arrive before this one
            with trio.fail_after(30):
                await done.wait()
            nursery.cancel_scope.cancel()
        assert seen == [b"/r/a", b"/r/b", b"/r/c", b"/r/d"]
