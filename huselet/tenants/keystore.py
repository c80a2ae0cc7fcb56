"""The running key ring: read at start, re-read on reload and when the file changes.

A change is noticed by polling the file's identity (inode, size, mtime) every
``keys_poll_ms``: one ``stat`` per period, which also works where inotify does
not (network file systems, bind mounts, editors that replace the file). The
poll wakes on :mod:`huselet.timegrid` with the health loops, and not at all
while no keys file is configured (an idle node's wake-ups, issue 12). A
file that fails validation is refused with its error and the ring in use
stays; ``huselet ctl keys`` shows the error until a good file arrives.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio

from huselet.errors import ConfigError
from huselet.log import get_logger
from huselet.tenants.keys import EMPTY_RING, KeyRing, read_keys_file
from huselet.timegrid import sleep_on_grid

log = get_logger("tenants")

READ_TIMEOUT_S = 10.0
Identity = tuple[int, int, int, int]


class KeyStore:
    def __init__(self, path: Path | None, *, poll_s: float = 1.0) -> None:
        self.path = path
        self.poll_s = poll_s
        self.ring: KeyRing = EMPTY_RING
        self.loads = 0
        self.last_error: str | None = None
        self.loaded_at: float | None = None  # wall clock
        self._identity: Identity | None = None
        # Called with the new ring after every successful (re)load.
        self.on_change: Callable[[KeyRing], None] | None = None
        self._retargeted = trio.Event()  # set when a reload names a keys file

    @property
    def enabled(self) -> bool:
        return self.path is not None

    def _stat(self) -> Identity | None:
        assert self.path is not None
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_mode)

    def load(self) -> KeyRing:
        """Read the file now (blocking; small and local). ConfigError if it is unusable."""
        assert self.path is not None
        identity = self._stat()
        try:
            ring = read_keys_file(self.path)
        except ConfigError as exc:
            self._identity = identity  # do not re-read the same bad file every period
            self.last_error = exc.message
            raise
        self._identity = identity
        self.ring = ring
        self.loads += 1
        self.last_error = None
        self.loaded_at = time.time()
        if self.on_change is not None:
            self.on_change(ring)
        return ring

    def retarget(self, path: Path | None) -> None:
        """A reload named another keys file (or none): read it from now on."""
        if path == self.path:
            return
        self.path = path
        self._identity = None
        self._retargeted.set()
        if path is None:
            self.ring = EMPTY_RING
            if self.on_change is not None:
                self.on_change(self.ring)

    async def reload(self) -> None:
        """Re-read the file off the event loop; keep the ring in use if it fails."""
        if self.path is None:
            return
        try:
            with trio.fail_after(READ_TIMEOUT_S):
                await trio.to_thread.run_sync(self.load, abandon_on_cancel=True)
        except ConfigError as exc:
            log.error("keys file refused; the keys in use stay", error=exc.message)
            return
        except trio.TooSlowError:
            self.last_error = f"not read within {READ_TIMEOUT_S:g} s"
            log.error("keys file refused; the keys in use stay", error=self.last_error)
            return
        log.info(
            "keys file loaded",
            path=str(self.path),
            tenants=len(self.ring.tenants),
            keys=len(self.ring.keys),
        )

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Poll the file for changes until cancelled."""
        task_status.started()
        while True:
            if self.path is None:
                # Nothing to poll: sleep until a reload names a keys file.
                await self._retargeted.wait()
                self._retargeted = trio.Event()
                continue
            await sleep_on_grid(self.poll_s)
            if self.path is not None and self._stat() != self._identity:
                await self.reload()

    def describe(self) -> dict[str, Any]:
        """Key ids, tenants and validity: never a secret."""
        now = time.time()
        ring = self.ring
        return {
            "keys_file": None if self.path is None else str(self.path),
            "loads": self.loads,
            "loaded_at": self.loaded_at,
            "error": self.last_error,
            "tenants": [
                {
                    "name": t.name,
                    "functions": list(t.functions),
                    "rate_per_s": t.rate.rate_per_s if t.rate else None,
                    "burst": t.rate.burst if t.rate else None,
                    "max_concurrent": t.max_concurrent,
                }
                for t in sorted(ring.tenants.values(), key=lambda t: t.name)
            ],
            "keys": [
                k.describe(now)
                for k in sorted(ring.keys.values(), key=lambda k: (k.tenant, k.key_id))
            ],
        }
