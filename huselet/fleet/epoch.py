"""The highest scheduler epoch this node has accepted, kept across restarts (fencing).

The protocol's fencing (PROTOCOL.md §9) only holds if a restarted node still
refuses the epochs it had already left behind; otherwise a deposed leader that
reaches a freshly restarted node could command it again. So the node writes
the epoch to ``state_dir/fleet-epoch`` (temporary file, fsync, rename, fsync
of the directory — in a worker thread, never on the event loop) and executes
a command only once its epoch is on disk. At start the file seeds the
session's highest epoch; a WELCOME or command below it is refused.
"""

from __future__ import annotations

from pathlib import Path

import trio

from cache.durable import write_atomically
from huselet.log import get_logger

log = get_logger("fleet")


class EpochFile:
    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.persisted = self._load()
        self.errors = 0
        self._lock = trio.Lock()

    def _load(self) -> int:
        if self.path is None:
            return 0
        try:
            text = self.path.read_text().strip()
        except FileNotFoundError:
            return 0
        except OSError as exc:
            log.error("cannot read the fleet epoch file", path=str(self.path), error=str(exc))
            return 0
        try:
            return max(0, int(text))
        except ValueError:
            log.error("fleet epoch file is corrupt; starting from 0", path=str(self.path))
            return 0

    async def persist(self, epoch: int) -> None:
        """Make ``epoch`` durable if it is higher than what is on disk."""
        if self.path is None or epoch <= self.persisted:
            return
        async with self._lock:
            if epoch <= self.persisted:
                return
            try:
                await trio.to_thread.run_sync(write_atomically, self.path, f"{epoch}\n")
            except OSError as exc:
                # Serving goes on; only the protection across a restart is weaker.
                self.errors += 1
                log.error("cannot persist the fleet epoch", epoch=epoch, error=str(exc))
                return
            self.persisted = epoch
