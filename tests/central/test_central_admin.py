"""The central scheduler's HTTP admin, in process, over loopback (h11 server, httpx client)."""

from __future__ import annotations

from pathlib import Path

import httpx
import trio

from huselet.central.admin import AdminHttp
from huselet.central.api import FleetApi
from huselet.central.server import CentralScheduler, CentralSettings


def settings(state: Path, name: str) -> CentralSettings:
    return CentralSettings(name, "127.0.0.1", 0, state, standby_poll_s=0.02, fsync=False)


async def test_routes_errors_and_the_standby(short_tmp: Path) -> None:
    leader = CentralScheduler(settings(short_tmp, "a"))
    standby = CentralScheduler(settings(short_tmp, "b"))
    admins = [AdminHttp(FleetApi(c), "127.0.0.1", 0) for c in (leader, standby)]
    async with trio.open_nursery() as nursery:
        await nursery.start(leader.run)
        await leader.leading.wait()
        await nursery.start(standby.run)
        for admin in admins:
            await nursery.start(admin.run)
        a, b = (f"http://127.0.0.1:{admin.port}" for admin in admins)
        async with httpx.AsyncClient(timeout=10) as http:
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
