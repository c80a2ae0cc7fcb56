"""gateway.max_connections_per_source against the real daemon: one source address
beyond its share is refused at once — HTTP with 429 ``too_many_connections``,
framed closed before WELCOME — while its open connections and other sources
are served."""

from __future__ import annotations

import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from daemon_harness import Daemon, function_toml, wait_until, write_config
from support import write_package

from protocol.ingress import Welcome
from protocol.ingress_client import ClientConnection

HANDLER = "def handler(event, context):\n    return event\n"
HEALTHZ = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"


@pytest.fixture(scope="module")
def daemon() -> Iterator[Daemon]:
    root = Path(tempfile.mkdtemp(prefix="hsc"))  # short: socket paths live under it
    write_package(root, "echo", HANDLER)
    config = write_config(root, function_toml("echo", runtime="process"))
    text = config.read_text().replace(
        "max_body_bytes = 65536",
        'max_body_bytes = 65536\nframed = "127.0.0.1:0"\nmax_connections_per_source = 2',
    )
    config.write_text(text + "\n[runtimes.process]\nisolation = false\n")
    try:
        with Daemon(config) as d:
            yield d
    finally:
        shutil.rmtree(root, ignore_errors=True)


def connect(address: str, source: str = "127.0.0.1") -> socket.socket:
    host, _, port = address.rpartition(":")
    sock = socket.socket()
    sock.settimeout(30)
    sock.bind((source, 0))
    sock.connect((host, int(port)))
    return sock


def http_address(daemon: Daemon) -> str:
    return daemon.url.removeprefix("http://")


def healthz(sock: socket.socket) -> bytes:
    """The head of the reply to one /healthz on ``sock`` (b"" if closed)."""
    sock.sendall(HEALTHZ)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def welcomed(sock: socket.socket) -> bool:
    """Whether the framed handshake on ``sock`` gets its WELCOME (False: closed)."""
    conn = ClientConnection()
    sock.sendall(conn.hello())
    while True:
        event = conn.next_event()
        if event is not None:
            return isinstance(event, Welcome)
        try:
            data = sock.recv(65536)
        except ConnectionResetError:
            return False
        if not data:
            return False
        conn.receive_data(data)


def counters(daemon: Daemon) -> tuple[int, int]:
    node = daemon.status()["node"]
    return node["http_connections"]["refused_per_source"], node["framed"]["refused_per_source"]


def test_http_beyond_a_sources_share_gets_429_and_others_are_served(daemon: Daemon) -> None:
    address = http_address(daemon)
    before = counters(daemon)[0]
    held = [connect(address) for _ in range(2)]
    try:
        for sock in held:  # answered: each holds one of the source's two
            assert healthz(sock).startswith(b"HTTP/1.1 200")
        extra = connect(address)
        with extra:
            head = healthz(extra)
            assert head.startswith(b"HTTP/1.1 429"), head
            assert b"retry-after: 1" in head.lower()
        assert counters(daemon)[0] == before + 1
        with connect(address, source="127.0.0.2") as other:  # another source
            assert healthz(other).startswith(b"HTTP/1.1 200")
        assert healthz(held[0]).startswith(b"HTTP/1.1 200")  # held ones unaffected
    finally:
        for sock in held:
            sock.close()

    def served_again() -> bool:  # once the daemon has seen the closes
        with connect(address) as sock:
            return healthz(sock).startswith(b"HTTP/1.1 200")

    assert wait_until(served_again, timeout=60)


def test_framed_beyond_a_sources_share_is_closed_before_welcome(daemon: Daemon) -> None:
    address = daemon.framed_address()
    before = counters(daemon)[1]
    held = [connect(address) for _ in range(2)]
    try:
        assert all(welcomed(sock) for sock in held)
        with connect(address) as extra:
            assert not welcomed(extra)
        assert counters(daemon)[1] == before + 1
        with connect(address, source="127.0.0.2") as other:
            assert welcomed(other)
    finally:
        for sock in held:
            sock.close()
