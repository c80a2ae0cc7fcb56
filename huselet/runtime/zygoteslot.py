"""Keeping a function's zygote alive, and letting starts wait for it.

:class:`ZygoteSlot` (re)spawns a function's :class:`~huselet.runtime.zygote.ZygoteProcess`,
backs off exponentially when it keeps dying young (a handler that fails to
import must not become a fork loop), and lets starts wait for it with a
deadline — or fail at once with the last error while backing off.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import trio

from huselet.log import get_logger
from huselet.runtime.base import StartFailed
from huselet.runtime.codeimage import code_key
from huselet.runtime.zygote import ZygoteProcess

log = get_logger("runtime.zygote")

YOUNG_DEATH_S = 2.0  # a zygote that dies sooner than this after ready counts as failing
BACKOFF_MIN_S = 0.1
BACKOFF_MAX_S = 30.0


class ZygoteSlot:
    """Keeps one function's zygote alive; starts wait on it here."""

    def __init__(self, key: tuple[Any, ...], make: Callable[[int], ZygoteProcess]) -> None:
        self.key = key
        self._make = make  # generation -> a new (not yet running) ZygoteProcess
        self.process: ZygoteProcess | None = None
        self.generation = 0
        self.failures = 0  # consecutive zygotes that never became ready
        self.young_deaths = 0  # consecutive zygotes that died soon after ready
        self.retry_at = 0.0
        self.last_error: str | None = None
        self.last_used = trio.current_time()
        self.closed = False
        self._changed = trio.Event()
        self._scope = trio.CancelScope()

    async def run(self, start_timeout_s: float) -> None:
        with self._scope:
            while not self.closed:
                now = trio.current_time()
                if now < self.retry_at:
                    await trio.sleep_until(self.retry_at)
                self.generation += 1
                try:
                    process = self._make(self.generation)
                except OSError as exc:
                    # Its cgroup or staging dir cannot be made (removed or
                    # broken behind our back): back off and try again.
                    self.failures += 1
                    self.last_error = f"cannot prepare the zygote: {exc}"
                    delay = min(BACKOFF_MAX_S, BACKOFF_MIN_S * 2 ** (self.failures - 1))
                    self.retry_at = trio.current_time() + delay
                    log.warning("zygote cannot be prepared", error=self.last_error)
                    self._notify()
                    continue
                self.process = process
                self._notify()
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._notify_when_ready, process)
                    await process.run(start_timeout_s)
                self.last_error = process.error
                if self.closed:
                    break
                self._schedule_rebuild(process)
                self._notify()
        self._notify()

    def _schedule_rebuild(self, process: ZygoteProcess) -> None:
        """Decide when to respawn: at once, or after a backoff if it keeps failing."""
        now = trio.current_time()
        if process.ready_at is None:
            # Never ready (import error, broken host): starts fail fast meanwhile.
            self.failures += 1
            delay = min(BACKOFF_MAX_S, BACKOFF_MIN_S * 2 ** (self.failures - 1))
        elif now - process.ready_at < YOUNG_DEATH_S:
            # Died young after ready (killed, or init code crashing it later):
            # the first time rebuild at once, repeated deaths back off.
            self.young_deaths += 1
            delay = min(BACKOFF_MAX_S, BACKOFF_MIN_S * 2 ** (self.young_deaths - 1))
            delay = 0.0 if self.young_deaths == 1 else delay
        else:
            self.failures = self.young_deaths = 0
            delay = 0.0
        self.retry_at = now + delay
        log.warning(
            "zygote exited; rebuilding",
            zygote=process.name,
            error=process.error,
            retry_in_s=round(delay, 2),
        )

    async def _notify_when_ready(self, process: ZygoteProcess) -> None:
        await process.ready.wait()
        if process.is_ready:
            self.failures = 0
        self._notify()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def ready(self, deadline: float) -> ZygoteProcess:
        """The live zygote, waiting for a (re)build until ``deadline``."""
        self.last_used = trio.current_time()
        while True:
            process = self.process
            if self.closed:
                raise StartFailed("the function's zygote was stopped")
            if process is not None and process.is_ready:
                return process
            backing_off = self.failures > 0 and trio.current_time() < self.retry_at
            if backing_off and (process is None or process.exited.is_set()):
                raise StartFailed(f"the function's zygote keeps failing: {self.last_error}")
            changed = self._changed
            with trio.move_on_at(deadline):
                await changed.wait()
                continue
            last = f" (last error: {self.last_error})" if self.last_error else ""
            raise StartFailed(f"the function's zygote was not ready in time{last}")

    def close(self) -> None:
        self.closed = True
        if self.process is not None:
            self.process.kill()
        self._scope.cancel()
        self._notify()


RETIRE_AFTER_S = 1.0  # a replaced code's zygote is stopped once unused this long


def retire_replaced(
    slots: dict[tuple[Any, ...], ZygoteSlot], newest: dict[str, tuple[Any, ...]], now: float
) -> None:
    """Stop zygotes of a function's replaced code once no start is using them.

    ``slots`` by (function, code…) key; ``newest``: each function's newest key.
    Instances already forked from them are the daemon's children and run on;
    new starts of the function go to the zygote of its newest code.
    """
    for key, slot in list(slots.items()):
        latest = newest.get(key[0])
        # Only zygotes of an image: one of a plain package directory (code
        # key of None) is left as it always was.
        if latest is None or latest == key or slot.closed or code_key(None) in key:
            continue
        process = slot.process
        busy = process is not None and process.busy
        if not busy and now - slot.last_used >= RETIRE_AFTER_S:
            log.info("stopping the zygote of replaced code", function=key[0])
            slot.close()
