"""The admin socket file (modes, stale and live sockets, removal) and client errors.

Real Unix sockets in a short temp directory (``sock_dir``/``sock_path`` in
conftest.py); the blocking client runs in a worker thread so the server keeps
serving on the test's event loop (helpers in adminkit.py).
"""

from __future__ import annotations

import os
import socket
import stat
from pathlib import Path
from typing import Any

import pytest
import trio
from adminkit import HANG_GUARD_S, call, make_server, wait_until

from huselet.admin.client import AdminClient
from huselet.admin.errors import (
    AdminError,
    AdminSocketInUse,
    AdminUnavailable,
)
from huselet.admin.server import AdminServer

# --- the socket file ---------------------------------------------------------


async def test_socket_is_0600_in_a_new_0700_dir(sock_dir: Path, nursery: trio.Nursery) -> None:
    path = sock_dir / "run" / "admin.sock"
    # An odd umask that would strip the owner's bits: neither the socket nor its
    # directory may depend on the umask the daemon was started with.
    umask_before = os.umask(0o277)
    try:
        await nursery.start(make_server(path).run)
        # The narrowed umask was the process's for the bind only.
        assert os.umask(0o277) == 0o277
    finally:
        os.umask(umask_before)
    st = os.lstat(path)
    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o600
    assert stat.S_IMODE(os.stat(path.parent).st_mode) == 0o700


async def start_stoppable(nursery: trio.Nursery, server: AdminServer) -> trio.CancelScope:
    """Start ``server`` and return a scope that stops just it."""
    scope = trio.CancelScope()

    async def serve(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        with scope:
            await server.run(task_status=task_status)

    await nursery.start(serve)
    return scope


async def test_socket_removed_on_exit_even_mid_command(sock_path: Path) -> None:
    server = make_server(sock_path)
    entered = trio.Event()

    async def hang(args: dict[str, Any]) -> None:
        entered.set()
        await trio.sleep_forever()

    server.register("hang", hang)
    outcome: list[BaseException] = []

    async def client() -> None:
        try:
            await call(sock_path, "hang")
        except AdminUnavailable as exc:
            outcome.append(exc)

    with trio.fail_after(HANG_GUARD_S):
        async with trio.open_nursery() as nursery:
            server_scope = await start_stoppable(nursery, server)
            nursery.start_soon(client)
            await entered.wait()
            server_scope.cancel()
    assert not sock_path.exists()
    assert len(outcome) == 1 and "closed the connection" in str(outcome[0])


async def test_stale_socket_is_replaced(sock_path: Path, nursery: trio.Nursery) -> None:
    # What a killed daemon leaves behind: a socket file nobody listens on.
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(sock_path))
    dead.close()
    assert stat.S_ISSOCK(os.lstat(sock_path).st_mode)
    await nursery.start(make_server(sock_path).run)
    assert await call(sock_path, "greet") == "hello world"


async def test_second_server_on_a_live_socket_is_refused(
    sock_path: Path, nursery: trio.Nursery
) -> None:
    await nursery.start(make_server(sock_path).run)
    inode = os.lstat(sock_path).st_ino
    with trio.fail_after(HANG_GUARD_S), pytest.raises(AdminSocketInUse) as info:
        await make_server(sock_path).run()
    assert "another huselet" in str(info.value) and str(sock_path) in str(info.value)
    # The loser neither removed nor replaced the winner's socket.
    assert os.lstat(sock_path).st_ino == inode
    assert await call(sock_path, "greet") == "hello world"


async def test_exit_does_not_remove_a_successors_socket(sock_path: Path) -> None:
    with trio.fail_after(HANG_GUARD_S):
        async with trio.open_nursery() as nursery:
            first = await start_stoppable(nursery, make_server(sock_path))
            # Someone removes the socket and a new daemon takes the path over.
            sock_path.unlink()
            second = await start_stoppable(nursery, make_server(sock_path))
            first.cancel()
            await wait_until(lambda: first.cancelled_caught)
            assert await call(sock_path, "greet") == "hello world"
            second.cancel()
    assert not sock_path.exists()  # the successor, in turn, cleaned up after itself


async def test_a_regular_file_at_the_path_is_never_removed(sock_path: Path) -> None:
    sock_path.write_text("precious")
    with trio.fail_after(HANG_GUARD_S), pytest.raises(AdminError, match="not a socket"):
        await make_server(sock_path).run()
    assert sock_path.read_text() == "precious"


# --- client errors without a daemon ------------------------------------------


def test_client_reports_a_missing_daemon(sock_path: Path) -> None:
    with pytest.raises(AdminUnavailable) as info:
        AdminClient(sock_path).call("status")
    assert "not running" in str(info.value) and str(sock_path) in str(info.value)


def test_client_reports_a_stale_socket_as_not_running(sock_path: Path) -> None:
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(sock_path))
    dead.close()
    with pytest.raises(AdminUnavailable, match="not running"):
        AdminClient(sock_path).call("status")


def test_client_times_out_on_a_silent_daemon(sock_path: Path) -> None:
    # Listens (so connect and send succeed) but never accepts nor answers.
    mute = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    mute.bind(str(sock_path))
    mute.listen(1)
    try:
        with pytest.raises(AdminUnavailable, match="timed out") as info:
            AdminClient(sock_path, timeout_s=0.3).call("status")
        assert str(sock_path) in str(info.value)
    finally:
        mute.close()
