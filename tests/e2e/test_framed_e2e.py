"""End to end: the framed ingress of the real daemon, driven by huselet's own
clients (blocking and trio) and by raw sockets for what a client must not do."""

from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
from daemon_harness import Daemon, wait_until, write_config
from support import write_package

from huselet.client.framed import FramedClient, FramedError
from huselet.client.framed_trio import open_framed_client
from protocol.frames import encode_frame
from protocol.ingress import Call, Reply, Welcome
from protocol.ingress_client import ClientConnection

pytestmark = pytest.mark.e2e

HANDLER = """
import json, os, time
def handler(event, context):
    if isinstance(event, (bytes, bytearray)):
        return bytes(event)
    if event.get("wait_for"):
        deadline = time.monotonic() + 60
        while not os.path.exists(event["wait_for"]) and time.monotonic() < deadline:
            time.sleep(0.005)
    if event.get("touch"):
        open(event["touch"], "w").close()
    if event.get("sleep"):
        time.sleep(event["sleep"])
    return {"n": event.get("n"), "function": context.function_name}
"""

FUNCTIONS = """
[[functions]]
name = "echo"
package = "pkgs/echo"
handler = "main:handler"
max_instances = 4
max_queue = 500
timeout_ms = 20000

[[functions]]
name = "web"
package = "pkgs/echo"
handler = "main:handler"
events = "http"

[[functions]]
name = "narrow"
package = "pkgs/echo"
handler = "main:handler"
max_instances = 1
max_queue = 1
timeout_ms = 20000
"""

TOKEN = "framed-test-token-0123456789"
# The handlers synchronise through files the test creates, so they must see the
# host's /tmp: these tests are about the ingress, not about confinement.
UNCONFINED = """
[runtimes.process]
isolation = false
"""


@pytest.fixture(scope="module")
def root() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="hlf"))
    write_package(path, "echo", HANDLER)
    (path / "token").write_text(TOKEN + "\n")
    os.chmod(path / "token", 0o600)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def function_status(daemon: Daemon, name: str) -> dict[str, Any]:
    return next(f for f in daemon.status()["functions"] if f["name"] == name)


def framed_status(daemon: Daemon) -> dict[str, Any]:
    return daemon.status()["node"]["framed"]  # type: ignore[no-any-return]


def framed_address(daemon: Daemon) -> str:
    return daemon.framed_address()


@pytest.fixture(scope="module")
def daemon(root: Path) -> Iterator[Daemon]:
    extra_gateway = f"""
framed = "127.0.0.1:0"
framed_socket = "{root}/run/framed.sock"
framed_max_inflight = 64
auth_token_file = "{root}/token"
"""
    config = write_config(root, FUNCTIONS)
    text = config.read_text().replace(
        "max_body_bytes = 65536", "max_body_bytes = 65536" + extra_gateway
    )
    config.write_text(text + UNCONFINED)
    with Daemon(config) as d:
        yield d


def test_many_calls_in_flight_on_one_connection(daemon: Daemon) -> None:
    before = framed_status(daemon)["connections"]
    with FramedClient.connect(framed_address(daemon), token=TOKEN) as client:
        assert client.max_inflight == 64
        events = [json.dumps({"n": n}).encode() for n in range(200)]
        replies = client.call_many([("echo", e, "json") for e in events])
    assert [r.status for r in replies] == [200] * 200, replies[0]
    assert [json.loads(r.body)["n"] for r in replies] == list(range(200))
    assert all(r.content_type == "application/json" for r in replies)
    assert len({r.request_id for r in replies}) == 200
    assert framed_status(daemon)["connections"] == before + 1


def test_replies_come_in_completion_order(daemon: Daemon, root: Path) -> None:
    flag = root / f"flag-{os.getpid()}"

    async def main() -> None:
        async with open_framed_client(framed_address(daemon), token=TOKEN) as client:
            slow_reply: list[Reply] = []

            async def slow() -> None:
                event = json.dumps({"wait_for": str(flag)}).encode()
                slow_reply.append(await client.call("echo", event, "json"))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(slow)  # sent first, on the same connection
                fast = await client.call("echo", b'{"n": 1}', "json")
                # The fast call's reply overtook the slow one, which cannot
                # finish before the flag exists.
                assert fast.status == 200 and not slow_reply
                flag.touch()
            assert slow_reply[0].status == 200

    trio.run(main)


def test_statuses_match_the_http_ingress(daemon: Daemon) -> None:
    with FramedClient.connect(framed_address(daemon), token=TOKEN) as client:
        missing = client.call("nosuch", b"{}", "json")
        assert (missing.status, missing.error_code) == (404, "unknown_function")
        # Far past the deadline: a stalled loop must not see the handler finish first.
        late = client.call("echo", b'{"sleep": 30}', "json", timeout_ms=200)
        assert (late.status, late.error_code) == (504, "deadline_exceeded")
        big = client.call("echo", b"x" * 65537, "bytes")
        assert (big.status, big.error_code) == (413, "payload_too_large")
        web = client.call("web", b"{}", "json")
        assert (web.status, web.error_code) == (400, "bad_request")
        assert "over HTTP" in (web.error_message or "")
        raw = client.call("echo", b"\x00\x01binary", "bytes")
        assert raw.status == 200 and raw.body == b"\x00\x01binary"
        assert raw.content_type == "application/octet-stream"


def test_queue_full_is_429_with_retry_after(daemon: Daemon, root: Path) -> None:
    flag = root / f"hold-{os.getpid()}"
    hold = json.dumps({"wait_for": str(flag)}).encode()
    with FramedClient.connect(framed_address(daemon), token=TOKEN) as client:
        # narrow: one instance and a queue of one, so of ten held calls some
        # must be refused (how many the instance itself takes on is its
        # credit window's business).
        first = client._conn.call("narrow", hold, "json")[1]
        client._sock.sendall(first)
        assert wait_until(lambda: function_status(daemon, "narrow")["inflight"] == 1, 60)
        rest = [client._conn.call("narrow", hold, "json")[1] for _ in range(9)]
        client._sock.sendall(b"".join(rest))
        # Calls on one connection are admitted concurrently, in no set order:
        # whichever do not fit are refused at once, before the flag is set.
        while not client._replies:
            client._collect_one()
        assert {r.status for r in client._replies.values()} == {429}
        flag.touch()
        replies = [client._wait(i) for i in range(10)]
    statuses = {r.status for r in replies}
    assert statuses == {200, 429}, replies
    for reply in replies:
        if reply.status == 429:
            assert reply.error_code == "queue_full" and reply.retry_after_s == 1


def test_a_wrong_or_missing_token_is_refused(daemon: Daemon) -> None:
    address = framed_address(daemon)
    with pytest.raises(FramedError, match="unauthorized"):
        FramedClient.connect(address)
    with pytest.raises(FramedError, match="unauthorized"):
        FramedClient.connect(address, token=TOKEN[:-1] + "X")


def test_unix_socket_is_private_and_serves(daemon: Daemon, root: Path) -> None:
    path = root / "run" / "framed.sock"
    mode = path.lstat().st_mode
    assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600
    with FramedClient.connect(path, token=TOKEN) as client:
        reply = client.call("echo", b'{"n": 7}', "json")
    assert reply.status == 200 and json.loads(reply.body)["n"] == 7


def _raw_connection(address: str) -> tuple[socket.socket, ClientConnection]:
    host, _, port = address.rpartition(":")
    sock = socket.create_connection((host, int(port)), timeout=30)
    conn = ClientConnection(token=TOKEN)
    sock.sendall(conn.hello())
    while True:
        event = conn.next_event()
        if event is not None:
            assert isinstance(event, Welcome)
            return sock, conn
        conn.receive_data(sock.recv(65536))


def _closed_by_peer(sock: socket.socket) -> bool:
    try:
        while sock.recv(65536):
            pass
    except ConnectionResetError:
        pass
    return True


def test_calls_beyond_max_inflight_are_not_read_until_a_slot_frees(
    daemon: Daemon, root: Path
) -> None:
    flag = root / f"later-{os.getpid()}"
    before = framed_status(daemon)["calls"]
    sock, conn = _raw_connection(framed_address(daemon))
    with sock:
        hold = json.dumps({"wait_for": str(flag)}).encode()
        frames = [encode_frame(Call(i, "echo", hold, "json").encode()) for i in range(64)]
        frames.append(encode_frame(Call(64, "echo", b'{"n": 64}', "json").encode()))
        sock.sendall(b"".join(frames))  # one more than WELCOME allowed
        # The node reads 64 calls, then stops reading this connection (TCP
        # pushes back on the client) instead of queueing without bound.
        assert wait_until(lambda: framed_status(daemon)["calls"] == before + 64, timeout=60)
        assert (
            function_status(daemon, "echo")["queued"] + function_status(daemon, "echo")["inflight"]
            == 64
        )
        assert framed_status(daemon)["calls"] == before + 64
        flag.touch()
        conn.inflight.update(range(65))
        replies = []
        while len(replies) < 65:
            event = conn.next_event()
            if event is None:
                conn.receive_data(sock.recv(65536))
            else:
                replies.append(event)
    assert sorted(r.id for r in replies) == list(range(65))
    assert all(r.status == 200 for r in replies)
    assert framed_status(daemon)["calls"] == before + 65


def test_a_hostile_function_name_is_a_404_that_does_not_echo_it(daemon: Daemon) -> None:
    sock, conn = _raw_connection(framed_address(daemon))
    with sock:
        name = "A" * 50_000
        sock.sendall(encode_frame(Call(1, name, b"{}", "json").encode()))
        conn.inflight.add(1)
        reply = None
        while reply is None:
            reply = conn.next_event()
            if reply is None:
                conn.receive_data(sock.recv(65536))
    assert isinstance(reply, Reply)
    assert (reply.status, reply.error_code) == (404, "unknown_function")
    assert name not in (reply.error_message or "")


def test_garbage_closes_only_that_connection(daemon: Daemon) -> None:
    sock, _ = _raw_connection(framed_address(daemon))
    with sock:
        sock.sendall(b"\x00\x00\x00\x05\xc1\xc1\xc1\xc1\xc1")  # 0xc1: never valid msgpack
        assert _closed_by_peer(sock)
    with FramedClient.connect(framed_address(daemon), token=TOKEN) as client:
        assert client.call("echo", b"{}", "json").status == 200


def test_a_client_that_does_not_read_is_dropped(short_tmp: Path) -> None:
    write_package(short_tmp, "echo", HANDLER)
    config = write_config(
        short_tmp,
        FUNCTIONS.replace("max_instances = 4", "max_instances = 2"),
    )
    config.write_text(
        config.read_text().replace(
            "max_body_bytes = 65536",
            'max_body_bytes = 1048576\nframed = "127.0.0.1:0"\nread_timeout_ms = 1000',
        )
        + UNCONFINED
    )
    with Daemon(config) as daemon:
        sock, _ = _raw_connection(framed_address(daemon))
        with sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            body = b"y" * 1_000_000
            # 64 replies of 1 MB each and never a read: far beyond socket buffers.
            for i in range(64):
                sock.sendall(encode_frame(Call(i, "echo", body, "bytes").encode()))
            assert wait_until(lambda: framed_status(daemon)["dropped_slow"] >= 1, timeout=120)
        with FramedClient.connect(framed_address(daemon)) as client:
            assert client.call("echo", b"{}", "json").status == 200
