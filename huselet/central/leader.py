"""Leadership between an active and a standby central scheduler: a lock and an epoch.

Both processes point at one state directory on a disk they share. The leader
holds an exclusive ``flock`` on ``leader.lock`` for as long as it lives; the
kernel drops the lock the instant the process dies (SIGKILL included), and the
standby, which polls with ``LOCK_NB``, takes it within one poll interval.

Under the lock the new leader reads ``epoch``, adds one and writes it back
(temporary file, fsync, rename, fsync of the directory) *before* it accepts a
single node: every leader incarnation has a strictly higher epoch, which is the
fencing token of the protocol (PROTOCOL.md §1, §9). ``leader.json`` says who
leads, for operators and tests.

``flock`` is only as good as the file system: a local disk, or one host's view
of it. Leaders on separate machines need a lease from a consensus store
(etcd, ZooKeeper) instead; the protocol does not care where the epoch comes from.
"""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path
from typing import Any

import trio


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
        while not self.try_acquire():
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
        _write_atomically(self.epoch_path, f"{epoch}\n")
        return epoch

    def announce(self, info: dict[str, Any]) -> None:
        _write_atomically(self.info_path, json.dumps(info, sort_keys=True) + "\n")

    def leader_info(self) -> dict[str, Any] | None:
        try:
            data = json.loads(self.info_path.read_text())
        except (FileNotFoundError, ValueError):
            return None
        return data if isinstance(data, dict) else None


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
