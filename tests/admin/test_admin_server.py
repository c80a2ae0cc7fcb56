"""The admin socket's commands and replies, and peers that break the framing.

Real Unix sockets in a short temp directory (``sock_dir``/``sock_path`` in
conftest.py); the blocking client runs in a worker thread so the server keeps
serving on the test's event loop (helpers in adminkit.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgpack
import pytest
import trio
from adminkit import RawConnection, call, call_expecting, make_server, wait_until

from huselet.admin.client import AdminClient
from huselet.admin.errors import (
    AdminCommandError,
)
from huselet.errors import UnknownFunction
from protocol.frames import encode_frame

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
