"""Opening TCP listeners with an error that names the address, a private Unix
socket listener, and serving one connection within a bounded number of slots.

``trio.open_tcp_listeners`` fails with a bare "Address already in use"; an
operator with several listeners (ingress, metrics) needs to know which one.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Awaitable, Callable
from pathlib import Path

import trio

from huselet.config import TcpAddress
from huselet.errors import HuseletError


class ListenError(HuseletError):
    """A listener could not bind; the message names the config key and address."""

    code = "startup"


async def open_listeners(address: TcpAddress, key: str) -> list[trio.SocketListener]:
    try:
        return await trio.open_tcp_listeners(address.port, host=address.host)
    except OSError as exc:
        raise ListenError(f"cannot listen on {key} {address}: {exc.strerror or exc}") from None


async def serve_in_slot(
    stream: trio.SocketStream,
    slots: trio.CapacityLimiter,
    serve: Callable[[trio.SocketStream], Awaitable[None]],
    *,
    quiet: tuple[type[Exception], ...],
) -> None:
    """Serve one connection if a slot is free, else close it at once (no queueing).

    Exceptions in ``quiet`` (a peer that went away, a malformed request) end
    the connection silently; the stream is closed and the slot freed either way.
    """
    try:
        slots.acquire_nowait()
    except trio.WouldBlock:
        await trio.aclose_forcefully(stream)
        return
    try:
        await serve(stream)
    except quiet:
        pass
    finally:
        slots.release()
        await trio.aclose_forcefully(stream)


async def serve_and_close(
    handler: Callable[[trio.SocketStream], Awaitable[object]],
    listeners: list[trio.SocketListener],
) -> None:
    """``trio.serve_listeners`` until cancelled; every listener is closed however it ends.

    serve_listeners also rides out EMFILE/ENFILE by pausing accept().
    """
    try:
        await trio.serve_listeners(handler, listeners)
    finally:
        for listener in listeners:
            await trio.aclose_forcefully(listener)


async def open_unix_listener(path: Path) -> trio.SocketListener:
    """Bind ``path`` (0600: only the daemon's own user and root may connect)."""
    unlink_socket(path)
    sock = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
    try:
        await sock.bind(os.fspath(path))
        # Before listen(): nobody can connect while the mode is still the umask's.
        os.chmod(path, 0o600)
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    return trio.SocketListener(sock)


def unlink_socket(path: Path) -> None:
    """Remove ``path`` if it is a socket (a previous run's); anything else stays."""
    try:
        if stat.S_ISSOCK(path.lstat().st_mode):
            path.unlink()
    except FileNotFoundError:
        pass
