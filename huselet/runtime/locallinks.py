"""Link sockets this process serves itself: "dialled" with a socket pair, not connect/accept.

Every runtime dials a function's link socket on behalf of its sandbox
(:func:`huselet.runtime.children.dial_link`). When the server behind that path
is in this very process (the daemon's :class:`~huselet.dispatch.links.LinkServer`),
connecting and accepting only cost the event loop a ``connect``, an
``accept4``, a turn of the accept loop and a handshake slot per start
(bench_startsteps, bench_density at 2,000 starts). Instead the server
registers its path here, and a dial makes a connected ``socketpair``: one end
goes straight to the server's handshake, the other to the sandbox. What the
sandbox gets is the same (a connected, non-blocking Unix stream socket whose
peer credentials are the daemon's), and the handshake is the same (HELLO,
token, WELCOME): only the kernel's listen queue is skipped.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable

# path -> takes the server's end of a new pair (and must not block or raise)
_SERVED: dict[str, Callable[[socket.socket], None]] = {}


def serve_locally(path: os.PathLike[str] | str, take: Callable[[socket.socket], None]) -> None:
    """Hand the server's end of every pair dialled for ``path`` to ``take``."""
    _SERVED[os.fspath(path)] = take


def stop_serving(path: os.PathLike[str] | str, take: Callable[[socket.socket], None]) -> None:
    """Undo :func:`serve_locally` (only ``take``'s own registration)."""
    key = os.fspath(path)
    if _SERVED.get(key) is take:
        del _SERVED[key]


def local_pair(path: os.PathLike[str] | str) -> socket.socket | None:
    """The sandbox's end of a pair whose other end the local server took; None if not local."""
    take = _SERVED.get(os.fspath(path))
    if take is None:
        return None
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    ours.setblocking(False)
    theirs.setblocking(False)  # as a dialled socket is: the worker sets its own mode
    try:
        take(ours)
    except BaseException:
        ours.close()
        theirs.close()
        raise
    return theirs
