"""Helpers for the admin socket tests: a server with test commands, client calls
from a worker thread, and a hand-driven raw connection.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio

from huselet.admin.client import AdminClient
from huselet.admin.errors import (
    AdminError,
)
from huselet.admin.server import AdminServer
from huselet.config import AdminSettings
from protocol.frames import FrameDecoder, encode_frame

NOBODY = 65534
# Generous bounds on anything that waits, so a regression fails instead of hanging.
HANG_GUARD_S = 10


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
