"""One task watching many descriptors: instances' exits (pidfds) and output pipes.

A task per instance waiting for its exit and another pumping its output made
every idle ``fork`` instance two sleeping tasks and every start two spawns
(with a nursery). :class:`FdWatcher` puts those descriptors in one private
epoll; a single trio task waits for it to turn readable and calls each ready
descriptor's callback. Per event the work is O(1) — nothing walks all
instances. Callbacks are synchronous and cheap and must tolerate being called
with nothing to read (epoll is level triggered, and a number may be reused
once its descriptor is closed); one that does not consume all it could is
simply called again on the next round, so a chatty instance cannot hold the
loop. :class:`WatchedOutput` is a child's output pipe read this way.
"""

from __future__ import annotations

import os
import select
from collections.abc import Callable

import trio

from huselet.log import get_logger
from huselet.runtime.output import OutputLines

log = get_logger("runtime")

MAX_EVENTS = 256  # per round; the rest stay ready for the next one
READS_PER_ROUND = 4  # of one pipe, 64 KiB each, before others get their turn
READ_SIZE = 65536


class FdWatcher:
    """Calls ``callback()`` whenever a watched descriptor is readable, from one task."""

    def __init__(self) -> None:
        # Made on first use: a runtime that is configured but never runs (or
        # runs no instance) holds no epoll descriptor.
        self._epoll: select.epoll | None = None
        self._callbacks: dict[int, Callable[[], None]] = {}
        self.running = False

    def _poller(self) -> select.epoll:
        if self._epoll is None:
            self._epoll = select.epoll()
        return self._epoll

    def watch(self, fd: int, callback: Callable[[], None]) -> None:
        self._poller().register(fd, select.EPOLLIN)
        self._callbacks[fd] = callback

    def unwatch(self, fd: int) -> None:
        """Stop watching ``fd``; call it before closing ``fd``."""
        if self._callbacks.pop(fd, None) is None:
            return
        try:
            self._poller().unregister(fd)
        except (OSError, ValueError):  # already closed (the kernel dropped it) or epoll closed
            pass

    def __len__(self) -> int:
        return len(self._callbacks)

    async def run(self) -> None:
        self.running = True
        epoll = self._poller()
        try:
            while True:
                await trio.lowlevel.wait_readable(epoll.fileno())
                for fd, _ in epoll.poll(0, MAX_EVENTS):
                    callback = self._callbacks.get(fd)
                    if callback is None:
                        continue
                    try:
                        callback()
                    except Exception:
                        # One instance's bug must not stop every instance's watch.
                        log.exception("descriptor callback failed", fd=fd)
                        self.unwatch(fd)
        finally:
            self.running = False

    def close(self) -> None:
        self._callbacks.clear()
        if self._epoll is not None:
            self._epoll.close()


class WatchedOutput:
    """A child's output pipe, read by the watcher's task as it turns readable; owns ``fd``."""

    __slots__ = ("_fd", "_watcher", "done", "lines")

    def __init__(self, fd: int, lines: OutputLines, watcher: FdWatcher) -> None:
        os.set_blocking(fd, False)
        self._fd: int | None = fd
        self._watcher = watcher
        self.lines = lines
        self.done = trio.Event()  # set at EOF (or close)
        watcher.watch(fd, self._readable)

    def _readable(self) -> None:
        for _ in range(READS_PER_ROUND):
            if self._fd is None:
                return
            try:
                chunk = os.read(self._fd, READ_SIZE)
            except BlockingIOError:
                return
            except OSError:
                chunk = b""
            if not chunk:
                self.close()
                return
            self.lines.feed(chunk)

    def close(self) -> None:
        """Log what is left and close the pipe (EOF, or the instance is gone)."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        self._watcher.unwatch(fd)
        os.close(fd)
        self.lines.finish()
        self.done.set()
