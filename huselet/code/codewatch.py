"""``cache.watch_packages``: a save in a function's package directory redeploys it.

For development. watchdog watches each ``package`` directory (recursively) and
the directory of each ``image`` file or layer image; an event marks the
functions using that path, and once no event arrived for ``settle_s`` their
code is refreshed through :meth:`PackageManager.refresh` — the same path as
``huselet ctl reload``: re-pack, and a changed digest redeploys (new requests
go to instances of the new code; in-flight ones finish on the old).

watchdog's thread only forwards paths into a bounded channel; when it is full
the event is dropped and every watched function is refreshed instead (an
unchanged tree costs a fingerprint, not a pack).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import trio
from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

from huselet.config import FunctionSettings
from huselet.log import get_logger

log = get_logger("codewatch")

QUEUE_SIZE = 1024
MAX_SETTLE_S = 5.0  # a file written continuously is refreshed at least this often
IGNORED_PARTS = frozenset({"__pycache__", ".git", ".hg", ".svn"})


class _Forward(FileSystemEventHandler):
    """Runs in watchdog's thread: hands paths to Trio, nothing more."""

    def __init__(self, forward: Callable[[str], None]) -> None:
        self._forward = forward

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type in ("opened", "closed_no_write"):
            return  # reads change nothing
        for path in (event.src_path, getattr(event, "dest_path", "")):
            if path:
                self._forward(os.fsdecode(path))


class CodeWatcher:
    """Refreshes functions whose code changed on disk. Start with :meth:`run`."""

    def __init__(
        self,
        functions: Callable[[], Sequence[FunctionSettings]],
        refresh: Callable[[list[FunctionSettings]], Any],
        *,
        settle_s: float = 0.3,
    ) -> None:
        self.functions = functions
        self.refresh = refresh
        self.settle_s = settle_s
        self._send, self._receive = trio.open_memory_channel[str](QUEUE_SIZE)
        self._token: trio.lowlevel.TrioToken | None = None
        self._observer: Any = None
        self._watches: dict[str, Any] = {}  # watched directory -> watchdog handle
        self._overflowed = False
        self.refreshes = 0

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self._token = trio.lowlevel.current_trio_token()
        self._observer = Observer()
        self._observer.start()
        try:
            self.sync()
            task_status.started()
            await self._loop()
        finally:
            self._observer.stop()
            with trio.CancelScope(shield=True), trio.move_on_after(5):
                await trio.to_thread.run_sync(self._observer.join, 5.0)

    def sync(self) -> None:
        """Watch what the current functions name (call after a reload)."""
        if self._observer is None:
            return
        wanted = {str(path): recursive for path, recursive in self._wanted().items()}
        handler = _Forward(self._from_thread)
        for directory in list(self._watches):
            if directory not in wanted:
                self._observer.unschedule(self._watches.pop(directory))
        for directory, recursive in wanted.items():
            if directory in self._watches:
                continue
            try:
                self._watches[directory] = self._observer.schedule(
                    handler, directory, recursive=recursive
                )
            except OSError as exc:  # gone, or out of inotify watches: reload still works
                log.warning("cannot watch code directory", directory=directory, error=str(exc))

    def _wanted(self) -> dict[Path, bool]:
        wanted: dict[Path, bool] = {}
        for fn in self.functions():
            if fn.code_source == "package":
                wanted[fn.package] = True
            files = [fn.image] + [layer.image for layer in fn.layers]
            for image in files:
                if image is not None:
                    wanted.setdefault(image.parent, False)
        return wanted

    def _users(self, path: str) -> list[FunctionSettings]:
        """Functions whose code ``path`` belongs to."""
        if IGNORED_PARTS & set(Path(path).parts):
            return []
        users = []
        for fn in self.functions():
            roots = [fn.package] if fn.code_source == "package" else []
            images = [fn.image] + [layer.image for layer in fn.layers]
            if any(path == str(r) or path.startswith(f"{r}{os.sep}") for r in roots) or any(
                image is not None and os.path.basename(path).startswith(image.name)
                for image in images
            ):
                users.append(fn)
        return users

    def _from_thread(self, path: str) -> None:
        try:
            trio.from_thread.run_sync(self._enqueue, path, trio_token=self._token)
        except trio.RunFinishedError:
            pass  # the daemon is stopping

    def _enqueue(self, path: str) -> None:
        try:
            self._send.send_nowait(path)
        except trio.WouldBlock:
            self._overflowed = True

    async def _loop(self) -> None:
        while True:
            path = await self._receive.receive()
            pending = {fn.name: fn for fn in self._users(path)}
            # Settle: an editor's save is several events; refresh once after the last.
            settle_until = trio.current_time() + MAX_SETTLE_S
            while trio.current_time() < settle_until:
                with trio.move_on_after(self.settle_s) as quiet:
                    path = await self._receive.receive()
                    pending.update({fn.name: fn for fn in self._users(path)})
                if quiet.cancelled_caught:
                    break
            if self._overflowed:
                self._overflowed = False
                pending = {fn.name: fn for fn in self.functions()}
            if pending:
                self.refreshes += 1
                log.info("code changed on disk; refreshing", functions=sorted(pending))
                await self.refresh(list(pending.values()))
