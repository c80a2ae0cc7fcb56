"""The admin socket's limits: connections, idle and non-reading clients.

Real Unix sockets in a short temp directory (``sock_dir``/``sock_path`` in
conftest.py); the blocking client runs in a worker thread so the server keeps
serving on the test's event loop (helpers in adminkit.py).
"""

from __future__ import annotations

from pathlib import Path

import trio
from adminkit import RawConnection, call, call_expecting, make_server, wait_until

from huselet.admin.client import AdminClient
from huselet.admin.errors import (
    AdminUnavailable,
)
from protocol.frames import encode_frame

# --- limits ------------------------------------------------------------------


async def test_connection_limit_answers_busy(sock_path: Path, nursery: trio.Nursery) -> None:
    server = make_server(sock_path, max_connections=2)
    await nursery.start(server.run)
    held = [await RawConnection.open(sock_path) for _ in range(2)]
    for conn in held:  # a reply proves the server accepted it and holds a slot
        assert (await conn.request({"cmd": "greet"}))["ok"] is True  # type: ignore[index]
    assert server.active_connections == 2

    extra = await RawConnection.open(sock_path)
    reply = await extra.receive()
    assert reply is not None and reply["error"]["code"] == "busy"
    assert await extra.receive() is None
    await extra.aclose()
    err = await call_expecting(sock_path, AdminUnavailable, "greet")
    assert "busy" in str(err)

    # Freeing a slot lets the next client in.
    await held[0].aclose()
    await wait_until(lambda: server.active_connections == 1)
    assert await call(sock_path, "greet") == "hello world"
    await held[1].aclose()


async def test_idle_connections_are_closed(sock_path: Path, nursery: trio.Nursery) -> None:
    server = make_server(sock_path, idle_timeout_s=0.2)
    await nursery.start(server.run)
    silent = await RawConnection.open(sock_path)
    # Half a frame is no better than nothing: the whole request must arrive in time.
    dripping = await RawConnection.open(sock_path)
    await dripping.stream.send_all(encode_frame({"cmd": "greet"})[:5])
    assert await silent.receive() is None
    assert await dripping.receive() is None
    await wait_until(lambda: server.active_connections == 0)


async def test_clients_that_do_not_read_replies_are_dropped(
    sock_path: Path, nursery: trio.Nursery
) -> None:
    server = make_server(sock_path, idle_timeout_s=0.2)
    server.register("big", lambda args: b"x" * (512 * 1024))
    await nursery.start(server.run)
    greedy = await RawConnection.open(sock_path)
    # Far more reply bytes than the socket buffers hold, and never a read.
    await greedy.stream.send_all(encode_frame({"cmd": "big"}) * 16)
    await wait_until(lambda: server.active_connections == 0)
    await greedy.aclose()
    assert await call(sock_path, "greet") == "hello world"


async def test_client_reconnects_after_the_daemon_idled_it_out(
    sock_path: Path, nursery: trio.Nursery
) -> None:
    # Room for the first call right after connecting, even on a loaded machine.
    server = make_server(sock_path, idle_timeout_s=1.0)
    await nursery.start(server.run)
    client = AdminClient(sock_path)
    try:
        assert await trio.to_thread.run_sync(client.call, "greet") == "hello world"
        first = client._sock
        await wait_until(lambda: server.active_connections == 0)
        assert await trio.to_thread.run_sync(client.call, "greet") == "hello world"
        assert client._sock is not first
    finally:
        client.close()
