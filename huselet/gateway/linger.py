"""Closing an HTTP client's connection without destroying our last reply.

After an early reply (413, protocol error, refused connection) the client may
still be sending. Closing a socket with unread input makes the kernel send a
RST, which can destroy our reply before the client reads it, so we half-close
and drain for a short, bounded while first. Also the peer's printable address,
and whether the peer has closed its end (:func:`peer_closed`).
"""

from __future__ import annotations

import select
import socket

import trio

from huselet.config import TcpAddress

LINGER_S = 0.5
LINGER_BYTES = 1024 * 1024
LINGER_RECEIVE_BYTES = 64 * 1024
TRANSPORT_ERRORS = (trio.BrokenResourceError, trio.ClosedResourceError)
# The peer's FIN is in (POLLRDHUP), or it reset the connection (POLLHUP, POLLERR).
_PEER_CLOSED = select.POLLRDHUP | select.POLLHUP | select.POLLERR


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


def peer_closed(sock: socket.socket | trio.socket.SocketType) -> bool:
    """Whether the client has closed (or reset) its end, whatever it sent before that.

    One poll(2) that does not wait. Unlike a ``MSG_PEEK`` read, which returns
    the requests still queued before the FIN, POLLRDHUP says the FIN is in
    even with unread data ahead of it. A client that only half-closed (and may
    still read) looks the same, so callers ask this of connections they are
    entitled to give up on (held at 429), not of every connection.
    """
    poller = select.poll()
    try:
        poller.register(sock.fileno(), _PEER_CLOSED)
        return bool(poller.poll(0))
    except (OSError, ValueError):
        return True  # no usable descriptor: nothing more can be answered on it
