"""Ending a held 429 early when its client has gone.

A throttled request is answered only after a hold of up to seconds
(:mod:`huselet.gateway.admission_throttle`). A client that gives up meanwhile
(a flood stopping, a caller timing out) would still have its connection, one
of ``gateway.max_connections``, kept until the hold ends. Its socket cannot
tell trio so: a pipelining client leaves requests queued, so the socket stays
readable, and only the FIN behind them (``EPOLLRDHUP``) says the client left.

So :class:`PeerWatch` keeps one epoll set of the sockets whose requests are
being held, each registered for ``EPOLLRDHUP`` (one-shot), and one task waits
for that set to become readable: it wakes only when some held client has
gone, and cancels that hold. A hold costs two ``epoll_ctl`` calls; nothing
polls. A held client that only half-closes is treated as gone too (as
:func:`~huselet.gateway.linger.peer_closed` does).
"""

from __future__ import annotations

import select

import trio

_GONE = select.EPOLLRDHUP | select.EPOLLONESHOT  # (EPOLLHUP and EPOLLERR always report)


class PeerWatch:
    """Holds of throttled replies that end as soon as their client has gone.

    :meth:`run` it in the ingress's nursery; without it holds just run their
    full length.
    """

    __slots__ = ("_epoll", "_holds")

    def __init__(self) -> None:
        self._epoll = select.epoll()
        self._holds: dict[int, trio.CancelScope] = {}  # fd -> the hold to cancel

    def __len__(self) -> int:
        return len(self._holds)

    async def hold_until(self, due: float, fd: int) -> bool:
        """Sleep until ``due``; True if it ended early because the client of ``fd`` has gone."""
        if fd < 0 or fd in self._holds or not self._register(fd):
            await trio.sleep_until(due)
            return False
        scope = trio.CancelScope(deadline=due)
        self._holds[fd] = scope
        try:
            with scope:
                await trio.sleep_forever()
        finally:
            mine = self._holds.pop(fd, None) is scope
            if mine:
                self._unregister(fd)
        return not mine  # the watcher took it out of the table: its client has gone

    async def run(self) -> None:
        """Cancel the holds whose client has gone, as the kernel reports them."""
        epoll = self._epoll
        try:
            while True:
                await trio.lowlevel.wait_readable(epoll.fileno())
                for fd, _ in epoll.poll(0):
                    self._unregister(fd)
                    scope = self._holds.pop(fd, None)
                    if scope is not None:
                        scope.cancel()
        finally:
            # The ingress is stopping: holds still running keep their deadlines (a
            # closed set only stops the early end), and the descriptor goes now.
            trio.lowlevel.notify_closing(epoll.fileno())
            epoll.close()

    def _register(self, fd: int) -> bool:
        try:
            self._epoll.register(fd, _GONE)
        except (OSError, ValueError):
            return False  # (a descriptor closed meanwhile): the hold runs its full length
        return True

    def _unregister(self, fd: int) -> None:
        try:
            self._epoll.unregister(fd)
        except (OSError, ValueError):
            pass  # closed meanwhile: the kernel dropped it from the set already
