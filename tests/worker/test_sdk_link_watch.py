"""The worker exits when the daemon's end of its link closes, even mid-handler.

A real worker process (``python -m huselet.worker``) talks to a minimal
daemon played by this test over a real Unix socket.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

from support import wait_until, write_package

from huselet.worker.sdk import Link
from protocol.link import PROTO_VERSION, READY, Hello, Request, Welcome, message_type

# Writes a marker, then sleeps far longer than any wait of the test: an exit the
# test sees can only come from the hang-up, never from the handler finishing.
SLOW = """
import os, time
def handler(event, context):
    open(os.path.join(os.path.dirname(__file__), "asleep"), "w").close()
    time.sleep(3600)
"""


def start_worker(root: Path, listener: socket.socket) -> subprocess.Popen[bytes]:
    pkg = write_package(root, "slow", SLOW)
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HUSELET_LINK": listener.getsockname(),
        "HUSELET_INSTANCE_ID": "slow-1",
        "HUSELET_TOKEN": "t",
        "HUSELET_FUNCTION": "slow",
        "HUSELET_PACKAGE": str(pkg),
        "HUSELET_HANDLER": "main:handler",
    }
    return subprocess.Popen([sys.executable, "-m", "huselet.worker"], env=env)


def test_a_busy_worker_exits_when_the_daemon_hangs_up(short_tmp: Path) -> None:
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(short_tmp / "link.sock"))
    listener.listen(1)
    listener.settimeout(20)
    worker = start_worker(short_tmp, listener)
    try:
        conn, _ = listener.accept()
        conn.settimeout(20)
        link = Link(conn)
        hello = Hello.decode(link.receive())
        assert hello.instance_id == "slow-1" and hello.pid == worker.pid
        link.send(Welcome(PROTO_VERSION, "slow", 1 << 20).encode())
        assert message_type(link.receive()) == READY
        link.receive()  # PULL
        link.send(Request("r1", b"{}", "json", 3_600_000).encode())
        assert wait_until(lambda: (short_tmp / "pkgs" / "slow" / "asleep").exists())
        assert worker.poll() is None  # the handler is asleep now
        conn.close()
        code = worker.wait(timeout=60)  # the handler would sleep for an hour
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
    assert code == 0
