"""The central scheduler's HTTP admin, in process, over loopback (h11 server, httpx client).

Two schedulers on one real etcd: the leader serves, the standby refuses and
names the leader; every route but health needs the bearer token.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import trio

from huselet.central.admin import AdminHttp
from huselet.central.api import FleetApi
from huselet.central.backend import EtcdBackend
from huselet.central.embedded import PrivateEtcd
from huselet.central.etcd import EtcdClient
from huselet.central.server import CentralScheduler, CentralSettings

TOKEN = "admin-token-for-tests-0123456789"
AUTH = {"authorization": f"Bearer {TOKEN}"}


def central(name: str, etcd: PrivateEtcd) -> CentralScheduler:
    settings = CentralSettings(name, "127.0.0.1", 0, fsync=False)
    return CentralScheduler(settings, EtcdBackend(EtcdClient([etcd.endpoint]), "/t", 2))


async def test_routes_errors_and_the_standby(etcd: PrivateEtcd) -> None:
    leader = central("a", etcd)
    standby = central("b", etcd)
    admins = [AdminHttp(FleetApi(c), "127.0.0.1", 0, token=TOKEN) for c in (leader, standby)]
    async with trio.open_nursery() as nursery:
        await nursery.start(leader.run)
        await leader.leading.wait()
        await nursery.start(standby.run)
        for admin in admins:
            await nursery.start(admin.run)
        a, b = (f"http://127.0.0.1:{admin.port}" for admin in admins)
        async with httpx.AsyncClient(timeout=10, headers=AUTH) as http:
            with trio.fail_after(30):
                while standby.leader_info() is None:
                    await trio.sleep(0.01)
            health = (await http.get(f"{b}/v1/health")).json()
            assert health["role"] == "standby" and health["leader"]["scheduler_id"] == "a"
            refused = await http.get(f"{b}/v1/fleet")
            assert refused.status_code == 503 and refused.json()["error"] == "standby"

            assert (await http.get(f"{a}/v1/health")).json()["role"] == "leader"
            assert (await http.get(f"{a}/v1/fleet")).json()["nodes"] == {}
            checks = [
                ("POST", "/v1/functions", b"{not json", 400, "bad_json"),
                ("POST", "/v1/functions", b'{"spec": {"name": "Bad!"}}', 400, "bad_request"),
                (
                    "POST",
                    "/v1/functions",
                    b'{"spec": {"name": "f", "handler": "m:h", "package": "/p"}}',
                    409,
                    "no_capacity",
                ),
                ("DELETE", "/v1/functions/nope", b"", 404, "unknown_function"),
                ("GET", "/v1/nodes/nope", b"", 404, "unknown_node"),
                ("POST", "/v1/nodes/nope/drain", b"{}", 404, "unknown_node"),
                ("GET", "/v2/anything", b"", 404, "not_found"),
            ]
            for method, path, body, status, code in checks:
                r = await http.request(method, a + path, content=body)
                assert (r.status_code, r.json()["error"]) == (status, code), (path, r.text)
        nursery.cancel_scope.cancel()


async def test_the_admin_requires_the_token(short_tmp: Path) -> None:
    c = CentralScheduler(CentralSettings("a", "127.0.0.1", 0, short_tmp, fsync=False))
    admin = AdminHttp(FleetApi(c), "127.0.0.1", 0, token=TOKEN)
    async with trio.open_nursery() as nursery:
        await nursery.start(c.run)
        await c.leading.wait()
        await nursery.start(admin.run)
        url = f"http://127.0.0.1:{admin.port}"
        spec = {"spec": {"name": "f", "handler": "m:h", "package": "/p"}, "nodes": ["n1"]}
        async with httpx.AsyncClient(timeout=10) as http:
            assert (await http.get(f"{url}/v1/health")).status_code == 200  # open: no secrets
            for headers in ({}, {"authorization": "Bearer wrong"}, {"authorization": TOKEN}):
                r = await http.post(f"{url}/v1/functions", json=spec, headers=headers)
                assert (r.status_code, r.json()["error"]) == (401, "unauthorized")
                r = await http.get(f"{url}/v1/fleet", headers=headers)
                assert r.status_code == 401
            assert c.store.state.functions == {}  # nothing reached the store
            r = await http.post(f"{url}/v1/functions", json=spec, headers=AUTH)
            assert r.status_code == 200, r.text
            assert set(c.store.state.functions) == {"f"}
        nursery.cancel_scope.cancel()
