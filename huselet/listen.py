"""Opening TCP listeners with an error that names the address, and serving one
connection within a bounded number of slots.

``trio.open_tcp_listeners`` fails with a bare "Address already in use"; an
operator with several listeners (ingress, metrics) needs to know which one.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

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
