"""End to end: HTTP replies written from their invocation's completion (gateway/replypark.py).

The real daemon and real workers; raw sockets, so that what is on the wire
(framing, order, keep-alive) is checked byte for byte. The fast path is taken
whenever a keep-alive client waits for one reply; these tests check that it
frames replies exactly, keeps their order when the client sends before its
reply, hands a reply that does not fit the socket to the connection's task
(a slow reader still gets all of it, and the connection stays usable), and
survives a client that vanishes in the middle of a reply.
"""

from __future__ import annotations

import json
import socket
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from daemon_harness import Daemon, function_toml, wait_until, write_config
from support import write_package

pytestmark = pytest.mark.e2e

GUARD_S = 30.0  # hang guard on every socket read, not a timing assertion
BIG = 4 * 1024 * 1024  # a reply larger than what loopback buffers take at once

HANDLER = """
import time
def handler(event, context):
    if event.get("sleep"):
        time.sleep(event["sleep"])
    if event.get("big"):
        return "x" * event["big"]
    return {"i": event.get("i")}
"""


@pytest.fixture(scope="module")
def daemon(module_short_tmp: Path) -> Iterator[Daemon]:
    write_package(module_short_tmp, "echo", HANDLER)
    functions = function_toml("echo", max_instances=2, timeout_ms=60000)
    with Daemon(write_config(module_short_tmp, functions)) as d:
        yield d


def connect(daemon: Daemon, rcvbuf: int | None = None) -> socket.socket:
    host, _, port = daemon.url.removeprefix("http://").rpartition(":")
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)  # before the handshake
    sock.settimeout(GUARD_S)
    sock.connect((host, int(port)))
    return sock


def request(event: dict[str, Any]) -> bytes:
    body = json.dumps(event).encode()
    return (
        b"POST /v1/invoke/echo HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
    )


class Replies:
    """Reads HTTP/1.1 replies off a socket, exactly by their Content-Length."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""

    def _fill(self) -> None:
        data = self.sock.recv(65536)
        assert data, "the daemon closed the connection"
        self.buf += data

    def next(self) -> tuple[int, dict[bytes, bytes], bytes]:
        while b"\r\n\r\n" not in self.buf:
            self._fill()
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        status_line, *lines = head.split(b"\r\n")
        assert status_line.startswith(b"HTTP/1.1 "), head[:200]
        headers = {}
        for line in lines:
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers[b"content-length"])
        while len(self.buf) < length:
            self._fill()
        body, self.buf = self.buf[:length], self.buf[length:]
        return int(status_line.split()[1]), headers, body


def direct_count(daemon: Daemon) -> int:
    return int(daemon.status()["node"]["http_connections"]["replies_direct"])


def test_keep_alive_replies_from_the_fast_path_are_framed_exactly(daemon: Daemon) -> None:
    before = direct_count(daemon)
    with connect(daemon) as sock:
        replies = Replies(sock)
        ids = set()
        for i in range(40):
            sock.sendall(request({"i": i}))
            status, headers, body = replies.next()
            assert status == 200, body
            assert json.loads(body) == {"i": i}
            assert b"connection" not in headers  # kept alive
            ids.add(headers[b"x-huselet-request-id"])
        assert len(ids) == 40
        assert replies.buf == b""  # nothing beyond the replies' lengths so far
    # Every one of them went out from its completion: the path under test ran.
    assert direct_count(daemon) - before == 40


def test_pipelined_and_early_requests_are_answered_in_order(daemon: Daemon) -> None:
    with connect(daemon) as sock:
        replies = Replies(sock)
        # Three in one write: the later ones are already parsed while the first runs.
        sock.sendall(b"".join(request({"i": i}) for i in range(3)))
        assert [json.loads(replies.next()[2])["i"] for _ in range(3)] == [0, 1, 2]
        # One that runs a while, and the next sent before its reply: the parked
        # connection wakes on the second one's bytes and must still answer in order.
        sock.sendall(request({"i": 10, "sleep": 0.3}))
        sock.sendall(request({"i": 11}))
        assert [json.loads(replies.next()[2])["i"] for _ in range(2)] == [10, 11]
        sock.sendall(request({"i": 12}))
        status, _, body = replies.next()
        assert (status, json.loads(body)) == (200, {"i": 12})


def test_a_slow_reader_gets_its_whole_reply_and_keeps_its_connection(daemon: Daemon) -> None:
    with connect(daemon, rcvbuf=4096) as sock:
        replies = Replies(sock)
        sock.sendall(request({"big": BIG}))
        # Not read until the daemon had to stop writing: the reply did not fit at
        # once, so its rest is written by the connection's task as room frees up.
        status, _, body = replies.next()
        assert status == 200
        assert body == b"x" * BIG
        # The connection carries on, and its next reply is framed right.
        sock.sendall(request({"i": 1}))
        status, _, body = replies.next()
        assert (status, json.loads(body)) == (200, {"i": 1})


def test_a_client_that_vanishes_mid_reply_does_not_hurt_the_daemon(daemon: Daemon) -> None:
    open_before = daemon.status()["node"]["http_connections"]["open"]
    for _ in range(3):
        sock = connect(daemon, rcvbuf=4096)
        sock.sendall(request({"big": BIG}))
        assert sock.recv(1)  # the reply has begun
        # Reset, not a clean close: unread data and SO_LINGER 0.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
    # And one that leaves before its reply is made.
    sock = connect(daemon)
    sock.sendall(request({"i": 0, "sleep": 0.3}))
    sock.close()
    assert wait_until(
        lambda: daemon.status()["node"]["http_connections"]["open"] <= open_before, GUARD_S
    )
    assert daemon.proc.poll() is None
    with connect(daemon) as sock:
        replies = Replies(sock)
        sock.sendall(request({"i": 5}))
        status, _, body = replies.next()
        assert (status, json.loads(body)) == (200, {"i": 5})
