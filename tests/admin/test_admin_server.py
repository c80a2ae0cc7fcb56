"""Tests of the admin socket: AdminServer and AdminClient over real Unix sockets.

Each test gets its own short temp directory (Unix socket paths must fit in 108
bytes). The blocking client runs in a worker thread so the server keeps serving
on the test's event loop.
"""

from __future__ import annotations

import json
import os
import socket
import stat
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import msgpack
import pytest
import trio
import uid_helper

from huselet.admin.client import AdminClient
from huselet.admin.errors import (
    AdminCommandError,
    AdminError,
    AdminSocketInUse,
    AdminUnavailable,
)
from huselet.admin.server import AdminServer
from huselet.config import AdminSettings
from huselet.errors import UnknownFunction
from protocol.frames import FrameDecoder, encode_frame

NOBODY = 65534
# Generous bounds on anything that waits, so a regression fails instead of hanging.
HANG_GUARD_S = 10


@pytest.fixture
def sock_dir(short_tmp: Path) -> Path:
    return short_tmp


@pytest.fixture
def sock_path(sock_dir: Path) -> Path:
    return sock_dir / "admin.sock"


def make_server(path: Path, **kwargs: Any) -> AdminServer:
    allowed = kwargs.pop("allowed_uids", ())
    server = AdminServer(AdminSettings(socket=path, allowed_uids=allowed), **kwargs)
    server.register("echo", lambda args: args)

    async def greet(args: dict[str, Any]) -> str:
        await trio.lowlevel.checkpoint()  # a real checkpoint: the handler is truly async
        return f"hello {args.get('name', 'world')}"

    server.register("greet", greet)
    return server


async def call(path: Path, cmd: str, **args: Any) -> Any:
    def blocking() -> Any:
        with AdminClient(path) as client:
            return client.call(cmd, **args)

    return await trio.to_thread.run_sync(blocking)


async def call_expecting(path: Path, exc_type: type[AdminError], cmd: str, **args: Any) -> Any:
    """Call and return the exception it must raise (pytest.raises cannot span threads)."""

    def blocking() -> AdminError:
        with AdminClient(path) as client, pytest.raises(exc_type) as info:
            client.call(cmd, **args)
        return info.value

    return await trio.to_thread.run_sync(blocking)


class RawConnection:
    """A hand-driven admin connection, to send what the real client never would."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.decoder = FrameDecoder()

    @classmethod
    async def open(cls, path: Path) -> RawConnection:
        return cls(await trio.open_unix_socket(str(path)))

    async def send(self, message: dict[str, Any]) -> None:
        await self.stream.send_all(encode_frame(message))

    async def receive(self) -> dict[str, Any] | None:
        """The next frame, or None on EOF (or reset: a close with our data unread)."""
        with trio.fail_after(HANG_GUARD_S):
            while True:
                msg = self.decoder.next_frame()
                if msg is not None:
                    return msg
                try:
                    chunk = await self.stream.receive_some(65536)
                except trio.BrokenResourceError:
                    chunk = b""
                if not chunk:
                    return None
                self.decoder.receive_data(chunk)

    async def request(self, message: dict[str, Any]) -> dict[str, Any] | None:
        await self.send(message)
        return await self.receive()

    async def aclose(self) -> None:
        await self.stream.aclose()


async def wait_until(condition: Callable[[], bool]) -> None:
    with trio.fail_after(HANG_GUARD_S):
        while not condition():
            await trio.sleep(0.01)


# --- commands and replies ----------------------------------------------------


async def test_sync_and_async_handlers(sock_path: Path, nursery: trio.Nursery) -> None:
    await nursery.start(make_server(sock_path).run)
    assert await call(sock_path, "echo", a=1, b=[1, "x"], c={"d": None}) == {
        "a": 1,
        "b": [1, "x"],
        "c": {"d": None},
    }
    assert await call(sock_path, "greet", name="ops") == "hello ops"


async def test_several_requests_on_one_connection(sock_path: Path, nursery: trio.Nursery) -> None:
    await nursery.start(make_server(sock_path).run)
    conn = await RawConnection.open(sock_path)
    # Pipelined: both requests are on the wire before the first reply is read.
    await conn.stream.send_all(
        encode_frame({"cmd": "greet", "args": {"name": "a"}})
        + encode_frame({"cmd": "echo", "args": {"n": 2}})
    )
    assert await conn.receive() == {"ok": True, "data": "hello a"}
    assert await conn.receive() == {"ok": True, "data": {"n": 2}}
    # args may be left out entirely.
    assert await conn.request({"cmd": "echo"}) == {"ok": True, "data": {}}
    await conn.aclose()


async def test_one_client_reuses_its_connection(sock_path: Path, nursery: trio.Nursery) -> None:
    server = make_server(sock_path)
    await nursery.start(server.run)

    def two_calls() -> tuple[Any, Any, bool]:
        with AdminClient(sock_path) as client:
            first = client.call("greet")
            conn = client._sock
            second = client.call("echo", x=1)
            return first, second, client._sock is conn

    first, second, same_connection = await trio.to_thread.run_sync(two_calls)
    assert (first, second) == ("hello world", {"x": 1})
    assert same_connection


async def test_unknown_command_lists_known_ones(sock_path: Path, nursery: trio.Nursery) -> None:
    await nursery.start(make_server(sock_path).run)
    err = await call_expecting(sock_path, AdminCommandError, "frobnicate")
    assert err.code == "unknown_command"
    assert "'frobnicate'" in err.message
    assert "known: echo, greet" in err.message


async def test_huselet_error_keeps_its_code(sock_path: Path, nursery: trio.Nursery) -> None:
    server = make_server(sock_path)

    def missing(args: dict[str, Any]) -> None:
        raise UnknownFunction(f"no function named {args['name']!r}")

    server.register("scale", missing)
    await nursery.start(server.run)
    err = await call_expecting(sock_path, AdminCommandError, "scale", name="nope")
    assert (err.code, err.message) == ("unknown_function", "no function named 'nope'")


async def test_unexpected_exception_is_internal_and_server_survives(
    sock_path: Path, nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    server = make_server(sock_path)

    async def broken(args: dict[str, Any]) -> None:
        raise RuntimeError("secret detail /etc/huselet/token")

    server.register("broken", broken)
    await nursery.start(server.run)

    def sequence() -> tuple[AdminCommandError, Any]:
        with AdminClient(sock_path) as client:
            with pytest.raises(AdminCommandError) as info:
                client.call("broken")
            # The same connection, and the server, carry on.
            return info.value, client.call("greet")

    err, after = await trio.to_thread.run_sync(sequence)
    assert err.code == "internal"
    assert "secret" not in err.message and "/etc" not in err.message
    assert after == "hello world"
    logged = [r for r in caplog.records if r.getMessage() == "admin command failed"]
    assert logged and logged[0].exc_info is not None
    assert "secret detail" in str(logged[0].exc_info[1])


async def test_unencodable_result_is_internal(sock_path: Path, nursery: trio.Nursery) -> None:
    server = make_server(sock_path)
    server.register("set", lambda args: {1, 2})
    await nursery.start(server.run)
    err = await call_expecting(sock_path, AdminCommandError, "set")
    assert err.code == "internal"
    assert await call(sock_path, "greet") == "hello world"


async def test_ill_shaped_requests_get_bad_request(sock_path: Path, nursery: trio.Nursery) -> None:
    await nursery.start(make_server(sock_path).run)
    conn = await RawConnection.open(sock_path)
    for request in ({"args": {}}, {"cmd": 7}, {"cmd": "echo", "args": [1]}):
        reply = await conn.request(request)
        assert reply is not None and reply["ok"] is False
        assert reply["error"]["code"] == "bad_request", request
    # Well-framed but wrong requests do not cost the connection.
    assert await conn.request({"cmd": "echo", "args": {"k": "v"}}) == {
        "ok": True,
        "data": {"k": "v"},
    }
    await conn.aclose()


def test_register_refuses_duplicates_and_empty_names(sock_path: Path) -> None:
    server = make_server(sock_path)
    with pytest.raises(ValueError, match="already registered"):
        server.register("echo", lambda args: None)
    with pytest.raises(ValueError):
        server.register("", lambda args: None)
    assert server.commands == ["echo", "greet"]


# --- broken peers ------------------------------------------------------------


def raw_frame(body: bytes) -> bytes:
    """A correctly length-prefixed frame around arbitrary bytes."""
    return len(body).to_bytes(4, "big") + body


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        # 0xc1 is the one byte msgpack never uses.
        (raw_frame(b"\xc1\xc1\xc1"), "bad_frame"),
        # Valid msgpack, but a list where a map must be.
        (raw_frame(msgpack.packb([1, 2, 3])), "bad_frame"),
        # Announces 2 MiB against a 1 MiB limit; refused before the body arrives.
        ((2 << 20).to_bytes(4, "big") + b"x" * 100, "frame_too_large"),
    ],
    ids=["garbage", "not-a-map", "oversized"],
)
async def test_broken_frame_closes_only_that_connection(
    sock_path: Path, nursery: trio.Nursery, payload: bytes, code: str
) -> None:
    server = make_server(sock_path)
    await nursery.start(server.run)
    good = await RawConnection.open(sock_path)
    assert (await good.request({"cmd": "greet"})) == {"ok": True, "data": "hello world"}

    bad = await RawConnection.open(sock_path)
    await bad.stream.send_all(payload)
    reply = await bad.receive()
    assert reply is not None and reply["ok"] is False
    assert reply["error"]["code"] == code
    assert await bad.receive() is None  # and then the daemon hung up
    await bad.aclose()
    # ...and released that connection's slot: its task is over, not spinning on.
    await wait_until(lambda: server.active_connections == 1)

    # The other, already open connection is untouched.
    assert (await good.request({"cmd": "echo", "args": {"still": True}})) == {
        "ok": True,
        "data": {"still": True},
    }
    await good.aclose()


def test_client_refuses_to_send_an_oversized_request(sock_path: Path) -> None:
    # No server needed: the client must refuse before connecting.
    with pytest.raises(AdminCommandError) as info:
        AdminClient(sock_path).call("echo", blob=b"x" * (1 << 20))
    assert info.value.code == "bad_request"


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


# --- who may connect ---------------------------------------------------------
#
# Neither end runs as root here: the server runs as one helper uid and the
# clients as another (or the same), each in a subprocess started with
# ``user=``/``group=`` — so the check is the one an unprivileged daemon makes,
# and root's own pass (uid 0 is always allowed) cannot hide a mistake.

SERVER_UID = 65533  # the daemon's helper uid: unprivileged, and not the test's

needs_uid_switch = pytest.mark.skipif(
    os.geteuid() != 0, reason="switching to helper uids needs root (CI runs as root)"
)


def _client_as(uid: int, path: Path) -> dict[str, Any]:
    child = uid_helper.Forked(uid, uid_helper.client, path)
    line = child.readline()
    assert child.wait() == 0, "the client child failed (its traceback is on stderr)"
    report: dict[str, Any] = json.loads(line)
    assert report["uid"] == uid
    return report


@contextmanager
def _server_as_helper_uid(sock_dir: Path, allowed: tuple[int, ...] = ()) -> Iterator[Path]:
    """An AdminServer running as SERVER_UID on ``sock_dir/admin.sock``."""
    os.chown(sock_dir, SERVER_UID, SERVER_UID)
    path = sock_dir / "admin.sock"
    child = uid_helper.Forked(SERVER_UID, uid_helper.serve, path, allowed)
    try:
        assert child.readline().split() == ["ready", str(SERVER_UID)], "no server (see stderr)"
        yield path
    finally:
        child.kill()


def _open_up_for_other_users(sock_dir: Path, sock_path: Path) -> None:
    # Loosen the file permissions on purpose: only SO_PEERCRED stands in the way now.
    os.chmod(sock_dir, 0o711)
    os.chmod(sock_path, 0o666)


@needs_uid_switch
def test_peer_of_another_uid_is_forbidden(sock_dir: Path) -> None:
    with _server_as_helper_uid(sock_dir) as path:
        _open_up_for_other_users(sock_dir, path)
        report = _client_as(NOBODY, path)
        assert report["raw"]["ok"] is False
        assert report["raw"]["error"]["code"] == "forbidden"
        # The client turns the daemon's refusal (not a file-permission error) into AdminForbidden.
        assert report["client"][0] == "AdminForbidden"
        assert "refused this user" in report["client"][1]
        # The daemon's own (unprivileged) uid gets through; so does root.
        assert _client_as(SERVER_UID, path)["client"] == ["ok", {"x": 1}]
        refused = AdminClient(path).call("refused")
        assert refused == {"uids": [NOBODY, NOBODY], "forbidden": 2}


@needs_uid_switch
def test_allowed_uid_may_connect(sock_dir: Path) -> None:
    with _server_as_helper_uid(sock_dir, allowed=(NOBODY,)) as path:
        _open_up_for_other_users(sock_dir, path)
        report = _client_as(NOBODY, path)
        assert report["raw"] == {"ok": True, "data": {"from": "child"}}
        assert report["client"] == ["ok", {"x": 1}]
        assert AdminClient(path).call("refused") == {"uids": [], "forbidden": 0}


@needs_uid_switch
def test_file_permissions_alone_keep_others_out(sock_dir: Path) -> None:
    # Without loosening anything, the 0700 directory / 0600 socket already refuse.
    with _server_as_helper_uid(sock_dir, allowed=(NOBODY,)) as path:
        report = _client_as(NOBODY, path)
        assert report["raw"] == "PermissionError"
        assert report["client"][0] == "AdminForbidden"
        assert "permission denied" in report["client"][1]
        # The kernel refused; the daemon never saw them.
        assert AdminClient(path).call("refused") == {"uids": [], "forbidden": 0}
