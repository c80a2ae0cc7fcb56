"""An admin server or client running as an unprivileged helper uid, for the peer-uid tests.

:func:`run_as` forks, drops the child to the helper uid (setgroups/setgid/
setuid) and runs :func:`serve` or :func:`client` there, so neither end of the
conversation is root and the daemon's own uid is not the test's. A fork
rather than an exec: the interpreter lives under /root, which another uid
cannot execute. The child writes its report to a pipe and leaves with
``os._exit``, never touching the parent's state.

The server answers ``echo`` and ``refused`` (the peer uids it turned away, with
how many) and writes "ready <euid>" once it listens; the client writes a JSON
report: its uid, a hand-made exchange and AdminClient's.
"""

from __future__ import annotations

import json
import logging
import os
import select
import socket
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio

from huselet.admin.client import AdminClient
from huselet.admin.errors import AdminError
from huselet.admin.server import AdminServer
from huselet.config import AdminSettings
from protocol.frames import FrameDecoder, encode_frame

HANG_GUARD_S = 10


class Forked:
    """A child process running ``target(out_fd, *args)`` as ``uid``."""

    def __init__(self, uid: int, target: Callable[..., None], *args: Any) -> None:
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the child
            code = 1
            try:
                os.close(read_end)
                os.setgroups([])
                os.setgid(uid)
                os.setuid(uid)
                target(write_end, *args)
                code = 0
            except BaseException:
                os.write(2, traceback.format_exc().encode())
            finally:
                os._exit(code)
        os.close(write_end)
        self.pid = pid
        self.out = os.fdopen(read_end, "r")

    def readline(self, timeout: float = 60) -> str:
        ready, _, _ = select.select([self.out], [], [], timeout)
        return self.out.readline() if ready else ""

    def wait(self) -> int:
        _, status = os.waitpid(self.pid, 0)
        self.out.close()
        return os.waitstatus_to_exitcode(status)

    def kill(self) -> int:
        os.kill(self.pid, 9)
        return self.wait()


def serve(out_fd: int, path: Path, allowed: tuple[int, ...]) -> None:
    refused: list[int] = []

    class Spy(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "uid not allowed" in record.getMessage():
                refused.append(getattr(record, "fields", {}).get("peer_uid"))

    logging.getLogger("huselet").addHandler(Spy())
    logging.getLogger("huselet").setLevel(logging.INFO)
    server = AdminServer(AdminSettings(socket=path, allowed_uids=allowed))
    server.register("echo", lambda args: args)
    server.register("refused", lambda args: {"uids": refused, "forbidden": server.forbidden})

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(server.run)
            os.write(out_fd, f"ready {os.geteuid()}\n".encode())

    trio.run(main)


def raw_exchange(path: Path) -> dict[str, Any] | None:
    """One echo request by hand; the first frame back, or None if the server just hung up."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as raw:
        raw.settimeout(HANG_GUARD_S)
        raw.connect(str(path))
        try:
            raw.sendall(encode_frame({"cmd": "echo", "args": {"from": "child"}}))
        except OSError:
            pass  # a refused peer may be hung up on before it finishes sending
        decoder = FrameDecoder()
        while (frame := decoder.next_frame()) is None:
            try:
                chunk = raw.recv(65536)
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                return None
            decoder.receive_data(chunk)
        return frame  # type: ignore[no-any-return]


def client(out_fd: int, path: Path) -> None:
    report: dict[str, Any] = {"uid": os.getuid()}
    try:
        report["raw"] = raw_exchange(path)
    except OSError as exc:
        report["raw"] = type(exc).__name__
    try:
        report["client"] = ["ok", AdminClient(path).call("echo", x=1)]
    except AdminError as exc:
        report["client"] = [type(exc).__name__, str(exc)]
    os.write(out_fd, json.dumps(report).encode() + b"\n")
