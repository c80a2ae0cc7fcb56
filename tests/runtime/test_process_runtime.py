"""The process runtime with real worker processes: isolation basics, exit
reporting, reaping, and output capture."""

from __future__ import annotations

import logging
import os
import signal
import socket
from pathlib import Path

import pytest
import trio
from support import write_package

from huselet.config import FunctionSettings, NodeSettings
from huselet.runtime import InstanceSpec
from huselet.runtime.base import StartFailed
from huselet.runtime.process import ProcessRuntime
from protocol.frames import FrameDecoder
from protocol.link import Hello


def spec(root: Path, pkg: Path, token: str = "tok-1", memory_mb: int = 64) -> InstanceSpec:
    fn = FunctionSettings(
        name="f", package=pkg, handler="main:handler", memory_mb=memory_mb, env={"FN_VAR": "1"}
    )
    return InstanceSpec(instance_id="f-1", function=fn, link_socket=root / "link.sock", token=token)


async def accept_hello(listener: trio.SocketListener) -> tuple[trio.SocketStream, Hello]:
    stream = await listener.accept()
    dec = FrameDecoder()
    while (msg := dec.next_frame()) is None:
        dec.receive_data(await stream.receive_some(65536))
    return stream, Hello.decode(msg)


async def listen(path: Path) -> trio.SocketListener:
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    await sock.bind(str(path))
    sock.listen(8)
    return trio.SocketListener(sock)


async def test_worker_connects_with_identity_in_its_own_session(short_tmp: Path) -> None:
    pkg = write_package(short_tmp, "ok", "def handler(e, c):\n    return e\n")
    runtime = ProcessRuntime({}, node=NodeSettings("n", short_tmp, short_tmp))
    os.environ["HUSELET_DAEMON_SECRET"] = "must-not-leak"
    listener = await listen(short_tmp / "link.sock")
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(runtime.run)
            handle = await runtime.start(spec(short_tmp, pkg))
            with trio.fail_after(60):
                stream, hello = await accept_hello(listener)
            assert (hello.instance_id, hello.token, hello.pid) == ("f-1", "tok-1", handle.pid)
            pid = handle.pid
            assert pid is not None and os.getsid(pid) == pid  # own session and group
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            assert b"FN_VAR=1" in environ
            assert not any(e.startswith(b"HUSELET_DAEMON_SECRET") for e in environ)
            assert not any(
                e.startswith(b"HUSELET_TOKEN")
                for e in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")[-1:]
            )
            # /proc, not prlimit(): as root the worker runs under another uid.
            limits = Path(f"/proc/{pid}/limits").read_text().splitlines()
            (address_space,) = [line for line in limits if line.startswith("Max address space")]
            assert address_space.split()[3:5] == [str(64 * 1024 * 1024)] * 2
            handle.kill()
            with trio.fail_after(10):
                status = await handle.wait()
            assert status.signal == signal.SIGKILL and status.describe() == "was killed by SIGKILL"
            assert not Path(f"/proc/{pid}").exists()  # reaped: no zombie left
            await stream.aclose()
            nursery.cancel_scope.cancel()
    finally:
        os.environ.pop("HUSELET_DAEMON_SECRET", None)
        await listener.aclose()


async def test_exit_code_and_output_are_reported(
    short_tmp: Path, caplog: pytest.LogCaptureFixture
) -> None:
    pkg = write_package(short_tmp, "ok", "def handler(e, c):\n    return e\n")
    runtime = ProcessRuntime({}, node=NodeSettings("n", short_tmp, short_tmp))
    caplog.set_level(logging.INFO, logger="huselet")
    async with trio.open_nursery() as nursery:
        await nursery.start(runtime.run)
        if os.geteuid() == 0:
            # The daemon dials the link for a confined worker: no listener, no start.
            with pytest.raises(StartFailed, match="link socket"):
                await runtime.start(spec(short_tmp, pkg))
            runtime.drops = False  # the unprivileged path below: the worker dials itself
        # No listener at the link path: the worker reports it and exits 2.
        handle = await runtime.start(spec(short_tmp, pkg))
        with trio.fail_after(60):
            status = await handle.wait()
        assert status.code == 2 and status.signal is None
        assert status.describe() == "exited with code 2"

        def lines() -> list[str]:
            return [
                r.fields["line"]
                for r in caplog.records
                if getattr(r, "fields", {}).get("instance") == "f-1"
            ]

        # The output pump drains the pipe on its own time: wait for the line.
        with trio.move_on_after(30):
            while not any("link to daemon failed" in line for line in lines()):
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()
    assert any("link to daemon failed" in line for line in lines()), lines()
