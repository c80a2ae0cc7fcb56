"""Closing an HTTP client's connection without destroying our last reply.

After an early reply (413, protocol error, refused connection) the client may
still be sending. Closing a socket with unread input makes the kernel send a
RST, which can destroy our reply before the client reads it, so we half-close
and drain for a short, bounded while first. Also the peer's printable address.
"""

from __future__ import annotations

import trio

from huselet.config import TcpAddress

LINGER_S = 0.5
LINGER_BYTES = 1024 * 1024
LINGER_RECEIVE_BYTES = 64 * 1024
TRANSPORT_ERRORS = (trio.BrokenResourceError, trio.ClosedResourceError)


async def linger(stream: trio.SocketStream) -> None:
    """Half-close, then drop what the client still sends, briefly (see LINGER_S)."""
    try:
        await stream.send_eof()
        with trio.move_on_after(LINGER_S):
            received = 0
            while received < LINGER_BYTES:
                data = await stream.receive_some(LINGER_RECEIVE_BYTES)
                if not data:
                    return
                received += len(data)
    except TRANSPORT_ERRORS:
        pass


def peer_of(stream: trio.SocketStream) -> str:
    """The client's address as host:port, or "?" once it is gone."""
    try:
        name = stream.socket.getpeername()
    except OSError:
        return "?"
    return str(TcpAddress(name[0], name[1]))
