"""Replies made during a pass of the event loop, written at its end (before its I/O wait).

A reply written from an invocation's completion (:mod:`huselet.gateway.replypark`)
runs inside an instance link's reader, before that reader hands the instance its
next request, and before the other tasks of the pass ran. Written there, the
reply wakes its client in the middle of the daemon's pass: on this 2-core VM the
woken client preempts the daemon, and the daemon paid ~30 µs more CPU per HTTP
request at concurrency 8 than with the reply written by the connection's task,
which trio ran late in the pass (issue 12). Put off to the end of the pass, the
replies go out when the daemon is about to wait anyway, after every request of
the pass went to its instance.

The same end of the pass hands requests over: HTTP requests begun during a
pass are held in the dispatcher's batch (:meth:`ReplyFlush.hold`, the
framed ingress's ``dispatcher.batch()``) and go to idle instances when it
ends, shared out, each instance's share in one write (measured: 0.2-0.4
fewer system calls per request at concurrency 8-32), before the replies.

:class:`ReplyFlush` is a trio instrument: ``before_io_wait`` runs once per pass.
trio drops an instrument whose hook raises, after which put-off replies would
never be written; so the hook catches everything, and what it runs must not
raise either (it is logged). A flush that is not installed in the running loop
(:attr:`ReplyFlush.installed`) runs work at once instead of putting it off.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager

import trio

from huselet.log import get_logger

log = get_logger("gateway")


class ReplyFlush(trio.abc.Instrument):
    """Work put off to the end of the event loop's pass; ``install()`` it while serving."""

    def __init__(self) -> None:
        self.installed = False
        self._due: list[Callable[[], None]] = []
        self._held: AbstractContextManager[object] | None = None

    def hold(self, batch: AbstractContextManager[object]) -> None:
        """Keep ``batch`` (the dispatcher's hand-overs) open until the end of this pass."""
        if self._held is None and self.installed:
            batch.__enter__()
            self._held = batch

    def later(self, work: Callable[[], None]) -> None:
        """Run ``work`` at the end of this pass (at once if not installed)."""
        if self.installed:
            self._due.append(work)
        else:
            work()

    def install(self) -> None:
        trio.lowlevel.add_instrument(self)
        self.installed = True

    def uninstall(self) -> None:
        """Stop putting work off; what is put off runs now."""
        self.installed = False
        self._release()
        try:
            trio.lowlevel.remove_instrument(self)
        except KeyError:
            pass  # dropped by trio already (a hook raised, which must not happen)
        self.run_due()

    def before_io_wait(self, timeout: float) -> None:
        if self._held is not None:
            self._release()
        if self._due:
            self.run_due()

    def _release(self) -> None:
        held, self._held = self._held, None
        try:
            if held is not None:
                held.__exit__(None, None, None)
        except BaseException:  # an instrument must not raise
            try:
                log.exception("handing requests over at the end of the pass failed")
            except BaseException:
                pass

    def run_due(self) -> None:
        """Run what is put off, in order; never raises."""
        while self._due:
            due, self._due = self._due, []
            for work in due:
                try:
                    work()
                except BaseException:  # an instrument must not raise (see the module doc)
                    try:
                        log.exception("a reply put off to the end of the pass failed")
                    except BaseException:
                        pass
