"""Blocking spawns off the event loop, on one long-lived thread.

``subprocess.Popen`` of a worker takes ~20 ms (fork of a large daemon, exec,
the preexec hook): on the Trio thread a burst of cold starts froze every
other request and ``/healthz`` for seconds (issue 12). trio's own worker
threads cannot do it: the parent-death signal (``PR_SET_PDEATHSIG``) fires
when the *thread* that forked exits, and trio retires idle worker threads
after seconds, which would kill healthy instances. So one dedicated thread
does every spawn and lives as long as the runtime — when it ends (the
runtime stops), the children get their death signal, as they would anyway.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import outcome
import trio

T = TypeVar("T")

_Job = tuple[Callable[[], Any], Callable[[outcome.Outcome[Any]], None]]


class SpawnThread:
    def __init__(self, name: str = "huselet-spawner") -> None:
        self._name = name
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        if self.running:
            return
        self._thread = threading.Thread(target=self._loop, name=self._name, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Let the thread finish the jobs it has and end (children then get PDEATHSIG)."""
        if self._thread is not None:
            self._jobs.put(None)
            self._thread = None

    def _loop(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            fn, deliver = job
            deliver(outcome.capture(fn))

    async def run(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on the spawner thread; its result (or exception) here.

        Not cancellable once submitted: a spawned child must always reach its
        caller, or it would run unsupervised. Spawns take milliseconds.
        """
        if not self.running:
            raise RuntimeError("the spawner thread is not running")
        token = trio.lowlevel.current_trio_token()
        done = trio.Event()
        box: list[outcome.Outcome[T]] = []

        def deliver(result: outcome.Outcome[T]) -> None:
            box.append(result)
            token.run_sync_soon(done.set)

        self._jobs.put((fn, deliver))
        with trio.CancelScope(shield=True):
            await done.wait()
        return box[0].unwrap()
