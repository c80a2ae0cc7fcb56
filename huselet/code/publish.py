"""The publish directory: images and source trees dropped there are installed live.

An operator (or a deploy job) drops into ``cache.publish_dir``:

- ``<digest>.hlimg`` or ``<digest>.hlimg.zst`` — an image, by its digest;
- ``anything.hlimg`` — an image under any name (its header names the digest);
- a directory — a source tree, packed into an image.

Each is verified, installed into the store and *announced*: logged as
``image published``, listed in ``huselet ctl cache``, remembered as the
image's origin (so a scrub that quarantines it refetches from here), and
passed to :attr:`PublishWatcher.announce` subscribers (the scheduler protocol
will tell the central scheduler). Nothing needs a restart. A bad drop is
rejected with its reason in the log and in ``ctl cache``; the daemon carries on.
Files stay where they were dropped: they are the origin of their images.

**Transient failures** — the store is full of images in use (:class:`CacheFull`,
``DiskFull``), a fetch kept failing transiently, the daemon is out of
descriptors or memory for a moment (``EMFILE``, ``ENFILE``, ``ENOMEM``,
``EAGAIN``, ``ENOSPC``) — are not the drop's fault: the entry is tried again
after ``retry_base_s`` (doubling, at most :data:`RETRY_MAX_S`), up to
``retries`` times, then rejected with the last reason. A drop that changes
meanwhile starts afresh. Counted as ``retried``; logged as ``publishing failed;
retrying``.

**Outside input.** What lands here is never trusted: a symlink (to a file or
a directory) is refused, never followed; FIFOs, sockets and devices are
refused (never opened for reading, so never a hang); an image is hashed with
``pread`` and copied into the store, and only the store's private copy is
ever mapped, so truncating a drop while it is being published gives a
rejection, not a SIGBUS. Directories are packed by :mod:`cache.builder`, which
refuses symlinks leading out of the tree, special files and files others
cannot read (see its docstring).

**Partial writes.** Names starting with ``.`` or ending in ``.tmp``/``.part``
(rsync, curl and most copy tools write under such names, then rename) are
ignored; anything else is handled only after it has been quiet for
``settle_s`` *and* its size/mtime (a tree's fingerprint) did not change over
one more ``settle_s``. Renaming a finished file or directory into place is the
fast, safe way to publish.

**Threads.** watchdog's observer thread hands each event's top-level name to
Trio with ``trio.from_thread.run_sync`` into a bounded memory channel. When
the channel is full the event is dropped and a rescan of the whole directory
is scheduled instead, so a flood of events costs memory of neither side.
"""

from __future__ import annotations

import errno
import os
import stat
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio
from watchdog.events import (
    DirCreatedEvent,
    DirModifiedEvent,
    DirMovedEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer
from watchdog.observers.polling import PollingObserver

from cache import format as fmt
from cache.errors import (
    CacheError,
    CacheFull,
    DigestMismatch,
    NotRegularFile,
    TransientFetchError,
)
from cache.origin import DirectoryOrigin, Origin
from cache.safeio import describe_mode
from cache.validate import inspect_image
from huselet.code.counters import PublishCounter
from huselet.code.origins import SingleFileOrigin
from huselet.code.packages import PackageManager
from huselet.code.packing import tree_fingerprint
from huselet.errors import HuseletError
from huselet.log import get_logger

log = get_logger("publish")

IGNORED_SUFFIXES = (".tmp", ".part", ".partial", ".swp", "~")
# Reads cause open/close-nowrite events; only these mean something was written.
WRITE_EVENTS: list[type[FileSystemEvent]] = [
    FileCreatedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileClosedEvent,
    DirCreatedEvent,
    DirModifiedEvent,
    DirMovedEvent,
]
MAX_PENDING = 4096  # names waiting to settle; beyond that, rescan later
MAX_REMEMBERED = 4096  # names already handled, with the snapshot handled
RESCAN_CHECK_S = 5.0  # longest sleep of the settle loop
RETRY_MAX_S = 60.0  # longest wait before trying a transient failure again
# OSErrors that say "not now", not "never": the host, not the drop.
TRANSIENT_ERRNOS = frozenset(
    {errno.EAGAIN, errno.EINTR, errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOSPC}
)


class PublishDirError(HuseletError):
    code = "publish_dir"


def is_ignored(name: str) -> bool:
    return not name or name.startswith(".") or name.endswith(IGNORED_SUFFIXES)


def is_transient(exc: BaseException) -> bool:
    """Whether publishing may succeed later with the same drop (see the module docstring)."""
    if isinstance(exc, CacheFull | TransientFetchError):
        return True
    return isinstance(exc, OSError) and exc.errno in TRANSIENT_ERRNOS


class _Handler(FileSystemEventHandler):
    """Runs in watchdog's thread: forwards top-level names, nothing more."""

    def __init__(self, forward: Callable[[str], None]) -> None:
        self._forward = forward

    def on_any_event(self, event: FileSystemEvent) -> None:
        self._forward(os.fsdecode(event.src_path))
        dest = getattr(event, "dest_path", "")
        if dest:
            self._forward(os.fsdecode(dest))


class PublishWatcher:
    """Watches one directory; installs what settles there. Start with :meth:`run`."""

    def __init__(
        self,
        directory: Path,
        manager: PackageManager,
        *,
        settle_s: float = 0.5,
        queue_size: int = 1024,
        fetch_timeout_s: float = 600.0,
        retries: int = 5,
        retry_base_s: float = 1.0,
    ) -> None:
        self.directory = directory
        self.manager = manager
        self.store = manager.store
        self.settle_s = settle_s
        self.fetch_timeout_s = fetch_timeout_s
        self.retries = retries
        self.retry_base_s = retry_base_s
        self._attempts: dict[str, int] = {}  # name -> transient failures of its current drop
        self.announce: list[Callable[[str, str], None]] = []  # (digest, name) subscribers
        self._send, self._receive = trio.open_memory_channel[str](queue_size)
        self._token: trio.lowlevel.TrioToken | None = None
        self._due: dict[str, float] = {}  # name -> when to look at it
        self._seen: dict[str, object] = {}  # name -> snapshot at the last look
        self._done: OrderedDict[str, object] = OrderedDict()  # name -> snapshot handled
        self._rescan_needed = False
        self.counters: dict[str, int] = {counter: 0 for counter in PublishCounter}
        self.observer_kind = ""

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise PublishDirError(
                f"cannot create cache.publish_dir {self.directory}: {exc.strerror}"
            ) from None
        self._token = trio.lowlevel.current_trio_token()
        observer = self._start_observer()
        try:
            self._rescan()  # what was dropped while the daemon was down
            task_status.started()
            await self._settle_loop()
        finally:
            observer.stop()
            with trio.CancelScope(shield=True), trio.move_on_after(5):
                await trio.to_thread.run_sync(observer.join, 5.0)

    def _start_observer(self) -> Any:
        handler = _Handler(self._from_thread)
        observer: Any = Observer()
        try:
            observer.schedule(
                handler, str(self.directory), recursive=True, event_filter=WRITE_EVENTS
            )
            observer.start()
            self.observer_kind = "inotify"
        except OSError as exc:
            # Out of inotify watches (or no inotify at all): polling still works.
            log.warning("inotify unavailable; polling the publish directory", error=str(exc))
            observer = PollingObserver(timeout=1.0)
            observer.schedule(handler, str(self.directory), recursive=True)
            observer.start()
            self.observer_kind = "polling"
        return observer

    # -- watchdog thread -> trio -------------------------------------------------------

    def _from_thread(self, path: str) -> None:
        rel = os.path.relpath(path, self.directory)
        if rel == "." or rel.startswith(".."):
            return
        name = rel.split(os.sep, 1)[0]
        if is_ignored(name):
            return
        try:
            trio.from_thread.run_sync(self._enqueue, name, trio_token=self._token)
        except trio.RunFinishedError:
            pass  # the daemon is stopping

    def _enqueue(self, name: str) -> None:
        try:
            self._send.send_nowait(name)
        except trio.WouldBlock:
            self.counters[PublishCounter.OVERFLOWS] += 1
            self._rescan_needed = True

    # -- settling ------------------------------------------------------------------------

    def _rescan(self) -> None:
        try:
            names = sorted(os.listdir(self.directory))
        except OSError as exc:
            log.error("cannot list the publish directory", error=str(exc))
            return
        for name in names:
            if not is_ignored(name):
                self._schedule(name)

    def _schedule(self, name: str) -> None:
        if name not in self._due and len(self._due) >= MAX_PENDING:
            self._rescan_needed = True
            return
        self._due[name] = trio.current_time() + self.settle_s

    async def _settle_loop(self) -> None:
        while True:
            now = trio.current_time()
            wait = min([*self._due.values(), now + RESCAN_CHECK_S]) - now
            with trio.move_on_after(max(0.0, wait)):
                name = await self._receive.receive()
                self._schedule(name)
                continue
            if self._rescan_needed:
                self._rescan_needed = False
                self._rescan()
            now = trio.current_time()
            for name in [n for n, t in self._due.items() if t <= now]:
                await self._look(name)

    async def _look(self, name: str) -> None:
        path = self.directory / name
        snapshot = await trio.to_thread.run_sync(_snapshot, path)
        if snapshot is None:  # gone, or nothing we handle
            self._due.pop(name, None)
            self._seen.pop(name, None)
            self._attempts.pop(name, None)
            return
        if self._seen.get(name) != snapshot:
            # Still changing (or first look): look again after another quiet spell.
            self._seen[name] = snapshot
            self._attempts.pop(name, None)  # a new drop: its own retries
            self._due[name] = trio.current_time() + self.settle_s
            return
        del self._due[name]
        del self._seen[name]
        if self._done.get(name) == snapshot:
            return  # handled already; our own reads and rescans land here
        self._done[name] = snapshot
        self._done.move_to_end(name)
        while len(self._done) > MAX_REMEMBERED:
            self._done.popitem(last=False)
        await self.handle(name)

    # -- handling ------------------------------------------------------------------------

    async def handle(self, name: str) -> str | None:
        """Verify, install and announce one settled entry; return its digest, or None."""
        path = self.directory / name
        try:
            mode = (await trio.to_thread.run_sync(os.lstat, path)).st_mode
            if stat.S_ISLNK(mode):
                raise NotRegularFile(
                    "is a symlink; symlinks in the publish directory are never followed "
                    "(move or copy the file or directory itself here)"
                )
            if stat.S_ISDIR(mode):
                result = await self.manager.pack_directory(path)
                return await self._install(result.digest, self.manager.packed_origin, name)
            if not stat.S_ISREG(mode):
                raise NotRegularFile(f"is {describe_mode(mode)}, not an image file or a directory")
            digest, origin = await self._image_source(path, name)
            return await self._install(digest, origin, name)
        except (CacheError, OSError) as exc:
            if not (is_transient(exc) and self._retry_later(name, str(exc))):
                self._attempts.pop(name, None)
                self._reject(name, str(exc))
            return None
        except Exception as exc:
            log.exception("publishing failed unexpectedly", name=name)
            self._reject(name, f"internal error: {exc!r}")
            return None

    async def _image_source(self, path: Path, name: str) -> tuple[str, Origin]:
        stem = name.removesuffix(".zst").removesuffix(fmt.IMAGE_SUFFIX)
        if not name.endswith((fmt.IMAGE_SUFFIX, fmt.IMAGE_SUFFIX + ".zst")):
            raise CacheError("not an image (.hlimg, <digest>.hlimg.zst) or a directory")
        if name.endswith(".zst"):
            if not fmt.is_digest_hex(stem):
                raise CacheError("a compressed image must be named <digest>.hlimg.zst")
            # The store verifies on install.
            return stem, DirectoryOrigin(self.directory, follow_symlinks=False)
        # Verified here, before the store sees it: a bad drop is reported as
        # what it is and leaves no fetch failure (and cool-down) in the store.
        digest = await trio.to_thread.run_sync(_verified_digest, path)
        if fmt.is_digest_hex(stem):
            return digest, DirectoryOrigin(self.directory, follow_symlinks=False)
        return digest, SingleFileOrigin(path, follow_symlinks=False)

    async def _install(self, digest: str, origin: Origin, name: str) -> str:
        already = self.store.contains(digest)
        await self.store.ensure(digest, origin, timeout=self.fetch_timeout_s)
        self.manager.remember(digest, origin, "published")
        self.manager.note("published", digest, name)
        self.counters[PublishCounter.PUBLISHED] += 1
        self._attempts.pop(name, None)
        log.info("image published", digest=digest, name=name, already_installed=already)
        for subscriber in list(self.announce):
            try:
                subscriber(digest, name)
            except Exception:
                log.exception("publish subscriber failed", digest=digest)
        return digest

    def _retry_later(self, name: str, reason: str) -> bool:
        """Look at ``name`` again after a backoff; False when its retries are spent."""
        attempts = self._attempts.get(name, 0)
        snapshot = self._done.get(name)
        if attempts >= self.retries or snapshot is None or len(self._due) >= MAX_PENDING:
            return False  # (no snapshot: handle() was called directly, not by the loop)
        self._attempts[name] = attempts + 1
        delay = min(self.retry_base_s * 2**attempts, RETRY_MAX_S)
        # Unchanged by then, the next look handles it at once (no second settle).
        del self._done[name]
        self._seen[name] = snapshot
        self._due[name] = trio.current_time() + delay
        self.counters[PublishCounter.RETRIED] += 1
        log.warning(
            "publishing failed; retrying",
            name=name,
            reason=reason,
            attempt=attempts + 1,
            delay_s=delay,
        )
        return True

    def _reject(self, name: str, reason: str) -> None:
        self.counters[PublishCounter.REJECTED] += 1
        self.manager.note("rejected", None, reason, name=name)
        log.error("published entry rejected", name=name, reason=reason)

    def describe(self) -> dict[str, Any]:
        return {
            "directory": str(self.directory),
            "observer": self.observer_kind,
            "settling": sorted(self._due),
            "counters": dict(self.counters),
        }


def _snapshot(path: Path) -> object | None:
    """What must stay the same for ``path`` to count as complete."""
    try:
        st = path.lstat()  # a symlink is judged (refused) as itself, never followed
        if stat.S_ISDIR(st.st_mode):
            return ("dir", tree_fingerprint(path))
        return ("file", st.st_ino, st.st_size, st.st_mtime_ns)
    except OSError:
        return None


def _verified_digest(path: Path) -> str:
    # pread-hashed, never mapped: the drop is someone else's file and may shrink.
    digest = inspect_image(path, verify=True, follow_symlinks=False).digest
    stem = path.name.removesuffix(fmt.IMAGE_SUFFIX)
    if fmt.is_digest_hex(stem) and stem != digest:
        raise DigestMismatch(f"image digest mismatch: named {stem}, header says {digest}")
    return digest
