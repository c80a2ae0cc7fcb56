"""Silent link connections to one function cannot starve another (issue 11, finding 7).

The real daemon: 300 connections to one function's link socket that never
say HELLO, then a cold start of another function. Before handshake slots
were per function, the 64 shared slots turned over only as silent peers
timed out, and the victim's worker could not connect within its start
deadline (a 502/504); now its start does not wait on them at all.
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from daemon_harness import Daemon, function_toml, write_config
from support import write_package

pytestmark = pytest.mark.e2e

SOURCE = "def handler(event, context):\n    return {'ok': True}\n"


def test_silent_peers_on_one_function_do_not_delay_another_cold_start(short_tmp: Path) -> None:
    write_package(short_tmp, "fn", SOURCE)
    config = write_config(
        short_tmp, function_toml("noisy", "pkgs/fn") + function_toml("victim", "pkgs/fn")
    )
    with Daemon(config) as daemon:
        path = str(short_tmp / "run" / "fn" / "noisy.sock")
        silent: list[socket.socket] = []
        try:
            for _ in range(300):
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                sock.setblocking(False)
                try:
                    sock.connect(path)
                except BlockingIOError:
                    sock.close()
                    break
                silent.append(sock)
            assert len(silent) >= 200
            reply = daemon.invoke("victim", {})
            assert reply.status_code == 200, reply.text
            assert reply.json() == {"ok": True}
        finally:
            for sock in silent:
                sock.close()
        # The noisy function itself still serves once the flood is gone.
        assert daemon.invoke("noisy", {}).status_code == 200
