"""Socket reads and writes for the request hot path, without a yield per call.

trio's ``SocketStream.receive_some`` and ``send_all`` wrap every system call in
a conflict detector, an error translator and two checkpoints, the second of
which reschedules the task through the run loop even when the call did not
block. A warm request crosses four of them (the caller's request in, the
request to the instance, its result back, the reply out): profiled under load
they were a third of the daemon's CPU per request (issue 12).

:class:`FastSocket` makes the system call first and parks in
``trio.lowlevel.wait_readable``/``wait_writable`` only when the socket would
block — the common case for a reader, which waits for its peer anyway.
Fairness and cancellation: a run of :data:`YIELD_EVERY` calls that did not
block ends in a checkpoint, so a peer that keeps a socket full can neither
starve the other tasks nor hide a cancellation for long.

Reads land in one reusable buffer per thread and only the bytes received are
copied out: ``recv(262144)`` allocates 256 KiB per call (then shrinks it),
which under the daemon's allocator settings (``gateway.budget.tune_allocator``)
is an mmap and an munmap whenever the heap has no such room at its top.

Errors are those of a trio stream: :class:`trio.ClosedResourceError` once the
socket was closed here, :class:`trio.BrokenResourceError` (the ``OSError`` as
its ``__cause__``) when the peer is gone. One task at a time reads, one writes
(the callers serialise their writes, as they must for frames anyway).
"""

from __future__ import annotations

import errno
import os
import threading
from collections.abc import Callable

import trio

# Calls that completed without waiting, in a row, before one forced checkpoint.
YIELD_EVERY = 16

# Not a peer's fault but ours: a descriptor that is not (or no longer) a socket.
_CLOSED_ERRNOS = {errno.EBADF, errno.ENOTSOCK}
# The largest read; callers asking for more get at most this much per call.
MAX_READ = 256 * 1024


class _ReadBuffer(threading.local):
    def __init__(self) -> None:
        self.buf = bytearray(MAX_READ)
        self.view = memoryview(self.buf)


_READ = _ReadBuffer()


class FastSocket:
    """Non-blocking reads and writes on ``sock`` (a trio socket, e.g. ``SocketStream.socket``)."""

    __slots__ = ("_fileno", "_sock", "_streak", "waited")

    def __init__(self, sock: trio.socket.SocketType) -> None:
        self._sock = sock
        # The descriptor, asked on every call: trio's fileno() is a Python method
        # over the stdlib socket's (-1 once closed), so ask the stdlib socket itself.
        self._fileno: Callable[[], int] = getattr(sock, "_sock", sock).fileno
        self._streak = 0  # calls in a row that did not block
        # The last receive_some() found nothing and had to wait for the peer: a
        # caller that cannot know whether its peer streams (a pipelining
        # client) can pass it as the next call's expect_wait.
        self.waited = False

    def _fd(self) -> int:
        fd = self._fileno()
        if fd < 0:  # trio sets it to -1 when the socket is closed
            raise trio.ClosedResourceError("the socket was closed")
        return fd

    async def _maybe_yield(self) -> None:
        self._streak += 1
        if self._streak >= YIELD_EVERY:
            self._streak = 0
            await trio.lowlevel.checkpoint()

    async def receive_some(self, max_bytes: int, *, expect_wait: bool = False) -> bytes:
        """Up to ``max_bytes`` bytes; ``b""`` once the peer closed its end.

        ``expect_wait``: the caller knows nothing can have arrived yet (it has
        just answered, and its peer speaks only when spoken to): wait for the
        socket first instead of a read that would fail with EAGAIN.
        """
        view = _READ.view
        target = view if max_bytes >= MAX_READ else view[:max_bytes]
        self.waited = expect_wait
        if expect_wait:
            self._fd()  # closed here: ClosedResourceError, as a read would raise
            self._streak = 0
            await trio.lowlevel.wait_readable(self._sock)
        while True:
            fd = self._fd()
            try:
                n = os.readv(fd, [target])
            except BlockingIOError:
                self._streak = 0
                self.waited = True
                await trio.lowlevel.wait_readable(self._sock)
                continue
            except OSError as exc:
                raise _translate(exc) from exc
            data = bytes(target[:n])  # copied before anything else can read into it
            # _maybe_yield() inline: a coroutine object per read is not free.
            self._streak += 1
            if self._streak >= YIELD_EVERY:
                self._streak = 0
                await trio.lowlevel.checkpoint()
            return data

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        """Write all of ``data``, waiting for room as needed."""
        with memoryview(data) as view:
            total = len(view)
            sent = 0
            while sent < total:
                fd = self._fd()
                try:
                    sent += os.write(fd, view[sent:])
                except BlockingIOError:
                    self._streak = 0
                    await trio.lowlevel.wait_writable(self._sock)
                except OSError as exc:
                    raise _translate(exc) from exc
        await self._maybe_yield()

    def write_now(self, data: bytes) -> int:
        """Write what fits now, without waiting: the bytes written (maybe 0); trio's errors."""
        try:
            return os.write(self._fd(), data)
        except BlockingIOError:
            return 0
        except OSError as exc:
            raise _translate(exc) from exc

    def send_nowait(self, data: bytes) -> int:
        """Write what fits now, without waiting: the number of bytes written (maybe 0).

        A broken or closed socket raises the plain ``OSError`` (``EBADF`` once closed).
        """
        try:
            return os.write(self._fileno(), data)
        except BlockingIOError:
            return 0


def _translate(exc: OSError) -> trio.ClosedResourceError | trio.BrokenResourceError:
    if exc.errno in _CLOSED_ERRNOS:
        return trio.ClosedResourceError("the socket was closed")
    return trio.BrokenResourceError(f"socket connection broken: {exc}")
