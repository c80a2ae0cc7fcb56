"""A tiny HTTP/1.1 admin endpoint (h11 on trio) for the reference central scheduler.

One request per connection, JSON in and out, bounded body and deadlines::

    GET    /v1/health                       role (leader | standby), epoch, leader
    GET    /v1/fleet                        every node: functions, instances, capacity
    GET    /v1/nodes/{id}                   one node's full reported view
    POST   /v1/nodes/{id}/drain|undrain     {"wait_s"?}
    POST   /v1/nodes/{id}/prefetch          {"images": [{"digest", "origin"?}], "wait_s"?}
    GET    /v1/functions                    desired functions
    POST   /v1/functions                    {"spec": {...}, "replicas"?, "nodes"?, "wait_s"?}
    DELETE /v1/functions/{name}
    POST   /v1/functions/{name}/quota       {"max_instances"?, "min_instances"?}
    GET    /v1/commands/{id}                a command's result

A standby answers everything but ``/v1/health`` with 503 and names the leader.

Every route but ``GET /v1/health`` requires ``Authorization: Bearer <token>``
(the token of ``--admin-token-file``; compared in constant time); without it
the answer is 401 ``unauthorized``. It listens on loopback by default; put it
behind a TLS-terminating proxy if operators reach it over a network.
"""

from __future__ import annotations

import hmac
import json
from typing import Any

import h11
import trio

from huselet.central.api import ApiError, FleetApi
from huselet.listen import serve_in_slot
from huselet.log import get_logger

log = get_logger("central.admin")

MAX_BODY = 1 << 20
REQUEST_TIMEOUT_S = 10.0
HANDLER_TIMEOUT_S = 75.0  # above the API's longest wait_s
MAX_CONNECTIONS = 64


class AdminHttp:
    def __init__(self, api: FleetApi, host: str, port: int, *, token: str) -> None:
        if len(token) < 16:
            raise ValueError("the admin token must be at least 16 characters")
        self.api = api
        self._token = token.encode()
        self.host = host
        self.port = port
        self._slots = trio.CapacityLimiter(MAX_CONNECTIONS)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(self.port, host=self.host)
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started()
        await trio.serve_listeners(self._handle, listeners)

    async def _handle(self, stream: trio.SocketStream) -> None:
        quiet = (trio.BrokenResourceError, trio.ClosedResourceError, OSError, h11.ProtocolError)
        await serve_in_slot(stream, self._slots, self._serve, quiet=quiet)

    async def _serve(self, stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=16 * 1024)
        request: h11.Request | None = None
        body = bytearray()
        complete = False
        with trio.move_on_after(REQUEST_TIMEOUT_S):
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    conn.receive_data(await stream.receive_some(65536))
                elif isinstance(event, h11.Request):
                    request = event
                elif isinstance(event, h11.Data):
                    body += event.data
                    if len(body) > MAX_BODY:
                        await _reply(stream, conn, 413, {"error": "too_large"})
                        return
                elif isinstance(event, h11.EndOfMessage):
                    complete = True
                    break
                else:  # ConnectionClosed before a whole request
                    return
        if request is None or not complete:
            return  # timed out
        method = request.method.decode()
        path = request.target.decode().split("?", 1)[0]
        if not (method == "GET" and path == "/v1/health") and not self._authorized(request):
            await _reply(stream, conn, 401, {"error": "unauthorized", "message": "bad token"})
            return
        try:
            with trio.fail_after(HANDLER_TIMEOUT_S):
                status, reply = 200, await self._route(method, path, bytes(body))
        except ApiError as exc:
            status, reply = exc.status, exc.body()
        except trio.TooSlowError:
            status, reply = 504, {"error": "timeout", "message": "the request took too long"}
        except Exception:
            log.exception("admin request failed", method=method, path=path[:200])
            status, reply = 500, {"error": "internal", "message": "see the scheduler's log"}
        await _reply(stream, conn, status, reply)

    def _authorized(self, request: h11.Request) -> bool:
        for name, value in request.headers:
            if name == b"authorization":
                scheme, _, given = value.partition(b" ")
                ok = hmac.compare_digest(given.strip(), self._token)
                return scheme.lower() == b"bearer" and ok
        return False

    async def _route(self, method: str, path: str, raw: bytes) -> Any:
        api = self.api
        parts = [p for p in path.split("/") if p]
        if parts[:1] != ["v1"] or len(parts) < 2:
            raise ApiError(404, "not_found", f"no route {path[:200]}")
        body = _json(raw) if raw else {}
        route = (method, parts[1], len(parts))
        if route == ("GET", "health", 2):
            return api.health()
        if route == ("GET", "fleet", 2):
            return api.fleet()
        if route == ("GET", "functions", 2):
            return api.functions()
        if route == ("POST", "functions", 2):
            return await api.deploy(body)
        if route == ("DELETE", "functions", 3):
            return await api.remove(parts[2])
        if route == ("POST", "functions", 4) and parts[3] == "quota":
            return await api.set_quota(parts[2], body)
        if route == ("GET", "nodes", 3):
            return api.node(parts[2])
        if route == ("POST", "nodes", 4):
            return await api.node_command(parts[2], parts[3], body)
        if route == ("GET", "commands", 3):
            return api.command(parts[2])
        raise ApiError(404, "not_found", f"no route {method} {path[:200]}")


def _json(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError as exc:
        raise ApiError(400, "bad_json", f"the body is not JSON: {exc}") from None


async def _reply(stream: trio.SocketStream, conn: h11.Connection, status: int, body: Any) -> None:
    data = json.dumps(body, sort_keys=True).encode() + b"\n"
    headers = [
        ("content-type", "application/json"),
        ("content-length", str(len(data))),
        ("connection", "close"),
    ]
    with trio.move_on_after(REQUEST_TIMEOUT_S):
        await stream.send_all(conn.send(h11.Response(status_code=status, headers=headers)) or b"")
        await stream.send_all(conn.send(h11.Data(data=data)) or b"")
        await stream.send_all(conn.send(h11.EndOfMessage()) or b"")
