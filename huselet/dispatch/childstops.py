"""Which of the daemon's children stopped: the kernel says so, no timer asks.

Idle instances of the ``fork`` and ``process`` runtimes are direct children
of the daemon (``fork`` clones them with ``CLONE_PARENT``). When a child is
stopped (SIGSTOP, SIGTSTP, ...) the kernel sends its parent SIGCHLD and keeps
a "stopped" record that ``waitid(WSTOPPED)`` hands out once; its exit is seen
through its pidfd (and its link's EOF). Together these make an idle
instance's liveness cost the daemon nothing until something happens — where
pinging each one every interval costs a wake-up per instance per interval.

One listener per Trio run (a system task started on first use): it waits for
SIGCHLD, collects every stopped child with ``waitid(P_ALL, WSTOPPED |
WNOHANG)`` — which never reaps an exit (no ``WEXITED``), so the runtimes'
own ``wait4`` on each pid is untouched — and tells whoever watches that pid.

Only workers that are themselves direct children can be watched: those of
:data:`WORKER_IS_CHILD` runtimes. A ``bwrap`` handle's pid is ``bwrap``, the
daemon's child, but its worker is bwrap's child (in its own pid namespace)
and a stop of it reaches nobody here; ``oci`` containers are runc's. Their
instances are pinged. SIGCHLD can only be received on the main thread:
elsewhere :meth:`ChildStops.watch` says no as well.
"""

from __future__ import annotations

import os
import signal
import threading
import weakref
from collections.abc import Callable
from typing import Any

import trio

from huselet.log import get_logger

log = get_logger("pool")

# Runtimes whose instance handle's pid is the worker process itself.
WORKER_IS_CHILD = frozenset({"fork", "process"})

# Told (with the watched owner) that its child stopped.
StopCallback = Callable[[Any], None]


def is_direct_child(pid: int) -> bool:
    """Is ``pid`` a child of this process? (Asked of the kernel; consumes nothing.)"""
    try:
        os.waitid(os.P_PID, pid, os.WSTOPPED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return False  # not ours (or already reaped)
    except OSError:
        return False
    return True


class ChildStops:
    """The run's SIGCHLD listener and who watches which child."""

    def __init__(self) -> None:
        # pid -> (owner, told when that pid stops). The owner is held weakly:
        # an instance that ended is forgotten without an unwatch call, and a
        # reused pid is simply watched again by its new owner.
        self._watched: dict[int, tuple[weakref.ref[Any], StopCallback]] = {}
        self._prune_at = 64
        self._started = False
        self.available = threading.current_thread() is threading.main_thread()
        self.stops_seen = 0

    def __len__(self) -> int:
        return len(self._watched)

    def watch(self, pid: int, owner: Any, on_stop: StopCallback) -> bool:
        """Tell ``on_stop(owner)`` whenever child ``pid`` stops; False if the kernel can't."""
        if not self.available or not is_direct_child(pid):
            return False
        if not self._started:
            self._started = True
            trio.lowlevel.spawn_system_task(self._listen, name="huselet-childstops")
        self._watched[pid] = (weakref.ref(owner), on_stop)
        if len(self._watched) >= self._prune_at:
            # Amortised: owners that ended are dropped once the table doubled.
            self._watched = {p: e for p, e in self._watched.items() if e[0]() is not None}
            self._prune_at = max(64, 2 * len(self._watched))
        return True

    def unwatch(self, pid: int) -> None:
        self._watched.pop(pid, None)

    async def _listen(self) -> None:
        try:
            with trio.open_signal_receiver(signal.SIGCHLD) as signals:
                self._collect()  # a child stopped before the handler was in place
                async for _ in signals:
                    self._collect()
        except (ValueError, RuntimeError) as exc:  # not the main thread after all
            self.available = False
            log.warning("stopped children cannot be watched", error=str(exc))

    def _collect(self) -> None:
        while True:
            try:
                info = os.waitid(os.P_ALL, 0, os.WSTOPPED | os.WNOHANG)
            except ChildProcessError:
                return  # no children at all
            if info is None:
                return  # none (more) stopped
            self.stops_seen += 1
            entry = self._watched.get(info.si_pid)
            owner = entry[0]() if entry is not None else None
            if entry is None or owner is None:
                continue  # a zygote, a launcher, an ended instance's pid
            try:
                entry[1](owner)
            except Exception:  # a watcher's bug must not end the run's listener
                log.exception("a stopped-child callback failed", pid=info.si_pid)


_CURRENT: trio.lowlevel.RunVar[ChildStops] = trio.lowlevel.RunVar("huselet_childstops")


def child_stops() -> ChildStops:
    """This Trio run's listener (made on first use)."""
    try:
        return _CURRENT.get()
    except LookupError:
        stops = ChildStops()
        _CURRENT.set(stops)
        return stops
