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

A start may also run that handshake in its own task rather than the server
spawning one (:class:`LinkHere`): the instance's lifecycle waits for its link
anyway, so one task per start fewer.
"""

from __future__ import annotations

import contextvars
import os
import socket
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager

import trio

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


class LinkHere:
    """The handshake of the link a task dials, kept for that task to run itself.

    Inside :meth:`claiming`, a local server that takes a pair this very task
    dialled (:func:`offer_handshake`) leaves its handshake here instead of
    spawning a task for it. Whoever claimed runs it (:meth:`run`) or, if it
    never gets that far, drops it (:meth:`abort`: the server's end is closed).
    """

    __slots__ = ("_abort", "_handshake", "_task")

    def __init__(self) -> None:
        self._task: trio.lowlevel.Task | None = None
        self._handshake: Callable[[], Awaitable[object]] | None = None
        self._abort: Callable[[], None] | None = None

    @property
    def pending(self) -> bool:
        return self._handshake is not None

    @contextmanager
    def claiming(self) -> Iterator[LinkHere]:
        self._task = trio.lowlevel.current_task()
        token = _HERE.set(self)
        try:
            yield self
        finally:
            _HERE.reset(token)
            self._task = None

    async def run(self) -> None:
        """Run the kept handshake (it closes its end itself unless the link is handed over)."""
        handshake, self._handshake, self._abort = self._handshake, None, None
        if handshake is not None:
            await handshake()

    def abort(self) -> None:
        """Drop a kept handshake that will not run: close the server's end."""
        abort, self._handshake, self._abort = self._abort, None, None
        if abort is not None:
            abort()


_HERE: contextvars.ContextVar[LinkHere | None] = contextvars.ContextVar(
    "huselet_link_here", default=None
)


def offer_handshake(handshake: Callable[[], Awaitable[object]], abort: Callable[[], None]) -> bool:
    """For a server's ``take``: True if the dialling task keeps ``handshake`` to run itself."""
    here = _HERE.get()
    if here is None or here.pending or here._task is not trio.lowlevel.current_task():
        return False  # not claimed, already holding one, or a task spawned inside the claim
    here._handshake, here._abort = handshake, abort
    return True
