"""The single-host dev mode's lock and epoch (no etcd): one scheduler per state directory.

The scheduler holds an exclusive ``flock`` on ``leader.lock`` for as long as
it lives; a second scheduler pointed at the same directory finds it taken and
is refused (:class:`~huselet.central.backend.LocalBackend`) — there is no
shared-directory standby, because ``flock`` on a shared or network file
system can be emulated or local-only and hand out two leases at once.

Under the lock the scheduler reads ``epoch``, adds one and writes it back
(temporary file, fsync, rename, fsync of the directory) *before* it accepts a
single node: every incarnation has a strictly higher epoch, the fencing token
of the protocol (PROTOCOL.md §9). ``leader.json`` says who runs, for
operators and tests. HA across machines uses etcd instead
(:mod:`huselet.central.election`).
"""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path
from typing import Any

import trio

from cache.durable import write_atomically


class LeaderLock:
    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.lock_path = state_dir / "leader.lock"
        self.epoch_path = state_dir / "epoch"
        self.info_path = state_dir / "leader.json"
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def try_acquire(self) -> bool:
        """Take the lock if nobody holds it; never blocks."""
        if self._fd is not None:
            return True
        self.state_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._fd = fd
        return True

    async def acquire(self, poll_s: float) -> None:
        """Wait (as standby) until the lock is ours."""
        # flock has no wake-up to wait on: polling is the only way to see it released.
        while not self.try_acquire():  # noqa: ASYNC110
            await trio.sleep(poll_s)

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None

    def current_epoch(self) -> int:
        try:
            return int(self.epoch_path.read_text().strip() or 0)
        except FileNotFoundError:
            return 0

    def next_epoch(self) -> int:
        """Bump the epoch on disk; only the lock holder may call this."""
        if self._fd is None:
            raise RuntimeError("only the leader may bump the epoch")
        epoch = self.current_epoch() + 1
        write_atomically(self.epoch_path, f"{epoch}\n")
        return epoch

    def announce(self, info: dict[str, Any]) -> None:
        write_atomically(self.info_path, json.dumps(info, sort_keys=True) + "\n")

    def leader_info(self) -> dict[str, Any] | None:
        try:
            data = json.loads(self.info_path.read_text())
        except (FileNotFoundError, ValueError):
            return None
        return data if isinstance(data, dict) else None
