"""The disk and memory levels of the package cache, with one fetch per digest.

Layout under ``state_dir``::

    images/<digest>.hlimg          verified images, never modified
    images/<digest>.<rand>.part    downloads in progress (deleted at start)
    quarantine/<digest>.hlimg.<n>  images found corrupt, kept for inspection (bounded)

- **Disk level**: images within ``disk_budget_bytes``; least recently used
  first out, but never an image someone holds an :class:`ImageLease` on.
  Install = fetch into ``.part``, fsync, verify the whole digest, make room,
  drop its write bits, rename, fsync the directory. A corrupt image goes to
  ``quarantine/``. The store maps only these private copies, never a file it
  does not own, and checks each one's (inode, size) against what it installed
  before mapping it: a file replaced or truncated behind its back (a ``cp``
  over it) is quarantined and fetched again, never mapped. Hashing (install,
  scrub) reads with ``pread``, so a truncation meanwhile is an error, not a
  SIGBUS.
- **Memory level**: :class:`ImageReader` mappings kept open within
  ``memory_budget_bytes`` (of mapped image size), LRU, leased ones never
  closed. Mapping only costs address space until pages are touched, so the
  budget may be exceeded while everything mapped is leased.
- **Fetching**: through :class:`cache.singleflight.FetchCoordinator` — one
  fetch per digest however many callers wait, retries with jittered backoff,
  a cool-down after failure. Fetches run in the store's own nursery.

Downloads in progress are not counted against the disk budget (each is at
most ``max_image_bytes``).

**Disk pressure** (the file system itself nearly full, whatever the budget):
the health loop calls :meth:`ImageStore.refuse_installs` — new images are then
refused with :class:`LowDiskSpace` before a byte is downloaded, while installed
images keep serving — and :meth:`ImageStore.evict_unused` to free what no
instance holds.
"""

from __future__ import annotations

import errno
import logging
import os
import random
import secrets
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import trio

from cache import format as fmt
from cache.errors import (
    CacheError,
    CacheFull,
    DigestMismatch,
    DiskFull,
    ImageNotFound,
    ImageTooLarge,
    TransientFetchError,
)
from cache.origin import Origin
from cache.reader import ImageReader, inspect_image
from cache.singleflight import FetchCoordinator

log = logging.getLogger("huselet.cache")


class LowDiskSpace(CacheError):
    """New images are refused: the state dir's file system is nearly full.

    Not a :class:`CacheFull`: the store may have budget left, it is the file
    system under it that is short (and it passes once space comes back).
    """


_TOUCH_INTERVAL_S = 60.0  # how stale an mtime may get before a hit refreshes it


@dataclass(slots=True)
class StoreStats:
    """Counters per level. :attr:`ImageStore.stats` returns a snapshot copy."""

    memory_hits: int = 0
    memory_misses: int = 0
    disk_hits: int = 0
    disk_misses: int = 0
    fetches: int = 0  # fetch attempts, retries included
    fetch_failures: int = 0  # flights that ended in an error
    coalesced: int = 0  # get() calls that joined a flight already running
    bytes_fetched: int = 0
    disk_images: int = 0
    disk_bytes: int = 0
    mapped_images: int = 0
    mapped_bytes: int = 0
    disk_evictions: int = 0
    memory_evictions: int = 0
    quarantined: int = 0
    partials_removed: int = 0


@dataclass(frozen=True, slots=True)
class ImageState:
    """One installed image as :meth:`ImageStore.images` reports it."""

    digest: str
    path: Path
    size: int
    mapped: bool  # open in the memory level
    pins: int  # leases held (instances using it)


class _DiskImage:
    """One installed image and who is using it."""

    __slots__ = ("digest", "identity", "last_touch", "path", "pins", "reader", "size")

    def __init__(self, digest: str, path: Path, size: int, inode: int) -> None:
        self.digest = digest
        self.path = path
        self.size = size
        # (inode, size) as installed: anything else at this path is not our file.
        self.identity = (inode, size)
        self.pins = 0
        self.reader: ImageReader | None = None
        self.last_touch = float("-inf")


class ImageLease:
    """A mapped image pinned on disk and in memory until :meth:`release`."""

    def __init__(self, store: ImageStore, image: _DiskImage) -> None:
        assert image.reader is not None
        self.digest = image.digest
        self.path = image.path
        self.reader: ImageReader = image.reader
        self._store = store
        self._image: _DiskImage | None = image

    def release(self) -> None:
        """Unpin (idempotent). The reader must not be used afterwards."""
        if self._image is not None:
            image, self._image = self._image, None
            self._store._unpin(image)

    def __enter__(self) -> ImageLease:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()


class ImageStore:
    """Verified images on local disk and mapped in memory. Start with :meth:`run`."""

    def __init__(
        self,
        state_dir: Path | str,
        *,
        disk_budget_bytes: int,
        memory_budget_bytes: int,
        max_image_bytes: int = 1 << 30,
        fetch_timeout: float = 300.0,
        fetch_attempts: int = 3,
        backoff_base: float = 0.5,
        backoff_max: float = 60.0,
        quarantine_keep: int = 16,
        rng: random.Random | None = None,
    ) -> None:
        self.images_dir = Path(state_dir) / "images"
        self.quarantine_dir = Path(state_dir) / "quarantine"
        self.disk_budget_bytes = disk_budget_bytes
        self.memory_budget_bytes = memory_budget_bytes
        self.max_image_bytes = max_image_bytes
        self.fetch_timeout = fetch_timeout
        self.quarantine_keep = quarantine_keep
        self._disk: OrderedDict[str, _DiskImage] = OrderedDict()  # LRU first
        self._memory: OrderedDict[str, _DiskImage] = OrderedDict()  # LRU first
        self._fetcher = FetchCoordinator(
            self._install,
            attempts=fetch_attempts,
            attempt_timeout=fetch_timeout,
            backoff_base=backoff_base,
            backoff_max=backoff_max,
            rng=rng or random.Random(),
        )
        self._reserved_bytes = 0  # images being renamed into place
        self._stats = StoreStats()
        # Set by the disk-pressure loop: why new images are refused right now.
        self.installs_refused: str | None = None
        self.installs_refused_count = 0

    # -- lifecycle -----------------------------------------------------------------

    async def run(
        self, *, task_status: trio.TaskStatus[ImageStore] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Scan the state directory, then serve until cancelled."""
        found, partials, broken = await trio.to_thread.run_sync(self._scan)
        for digest, path, size, inode in found:
            self._disk[digest] = _DiskImage(digest, path, size, inode)
        self._stats.partials_removed += partials
        self._stats.quarantined += broken
        self._make_room(0, "(budget check at start)")
        try:
            async with trio.open_nursery() as nursery:
                self._fetcher.nursery = nursery
                task_status.started(self)
                await trio.sleep_forever()
        finally:
            self._fetcher.nursery = None
            for image in self._memory.values():
                if image.pins == 0 and image.reader is not None:
                    image.reader.close()
                    image.reader = None
            self._memory.clear()

    def _scan(self) -> tuple[list[tuple[str, Path, int, int]], int, int]:
        self.images_dir.mkdir(parents=True, exist_ok=True)
        self.quarantine_dir.mkdir(parents=True, exist_ok=True)
        entries = sorted(self.images_dir.iterdir(), key=_mtime)  # oldest first = LRU order
        found, partials, broken = [], 0, 0
        for path in entries:
            if path.name.endswith((".part", ".tmp")):
                path.unlink(missing_ok=True)
                partials += 1
                continue
            digest = path.name.removesuffix(fmt.IMAGE_SUFFIX)
            if not (path.name.endswith(fmt.IMAGE_SUFFIX) and fmt.is_digest_hex(digest)):
                log.warning("ignoring unexpected file %s in the image store", path)
                continue
            try:
                st = os.lstat(path)
                # Structure only: whole digests were checked at install; scrub re-checks.
                with ImageReader.open(
                    path, verify=False, expected_identity=(st.st_ino, st.st_size)
                ) as reader:
                    found.append((digest, path, reader.size, st.st_ino))
            except FileNotFoundError:
                continue
            except CacheError as exc:
                self._move_to_quarantine(path, str(exc))
                broken += 1
        return found, partials, broken

    # -- the API -------------------------------------------------------------------

    async def get(
        self, digest: str, origin: Origin | None = None, *, timeout: float | None = None
    ) -> ImageLease:
        """A lease on the mapped image, fetching it from ``origin`` if it is not on disk.

        Waits at most ``timeout`` seconds (default ``fetch_timeout``); the
        fetch itself carries on for other callers.
        """
        with self._deadline(digest, timeout):
            # Twice at most: an installed file found broken (or gone) when
            # mapping is dropped, and the second round fetches it afresh.
            for attempt in (1, 2):
                image = await self._ensure(digest, origin)
                image.pins += 1  # before any await: pinned images are never evicted
                try:
                    await self._map(image)
                except (CacheError, FileNotFoundError) as exc:
                    image.pins -= 1
                    self._quarantine(image, str(exc))
                    if attempt == 2 or origin is None:
                        raise
                    continue
                except BaseException:
                    image.pins -= 1
                    raise
                return ImageLease(self, image)
        raise AssertionError("unreachable")

    @contextmanager
    def _deadline(self, digest: str, timeout: float | None) -> Iterator[None]:
        limit = self.fetch_timeout if timeout is None else timeout
        try:
            with trio.fail_after(limit):
                yield
        except trio.TooSlowError:
            raise TransientFetchError(f"image {digest} not available within {limit}s") from None

    async def _map(self, image: _DiskImage) -> None:
        if image.reader is not None and not image.reader.closed:
            self._stats.memory_hits += 1
        else:
            self._stats.memory_misses += 1
            reader = await trio.to_thread.run_sync(
                _open_installed, image.path, image.digest, image.identity
            )
            if image.reader is None or image.reader.closed:
                image.reader = reader
            else:  # another task mapped it meanwhile; keep one mapping
                reader.close()
        self._memory[image.digest] = image
        self._memory.move_to_end(image.digest)
        self._evict_memory()

    async def ensure(
        self, digest: str, origin: Origin | None = None, *, timeout: float | None = None
    ) -> Path:
        """Install the image on disk if needed (the prefetch path); return its path.

        Neither maps nor pins it: a later eviction may remove it again.
        """
        with self._deadline(digest, timeout):
            return (await self._ensure(digest, origin)).path

    async def _ensure(self, digest: str, origin: Origin | None) -> _DiskImage:
        if not fmt.is_digest_hex(digest):
            raise ValueError(f"not a sha256 hex digest: {digest!r}")
        first = True
        while (image := self._disk.get(digest)) is None:
            if first:
                self._stats.disk_misses += 1
                first = False
            if origin is None:
                raise ImageNotFound(f"image {digest} is not in the store and has no origin")
            # Checked before a flight starts, so a refusal leaves no fetch
            # cool-down behind: once space is back the next call installs.
            self._check_installs_allowed(digest)
            await self._fetcher.fetch(digest, origin)
        if first:
            self._stats.disk_hits += 1
        self._disk.move_to_end(digest)
        self._touch(image)
        return image

    async def scrub(self) -> list[str]:
        """Re-hash every installed image; quarantine the bad ones; return their digests."""
        bad = []
        for image in list(self._disk.values()):
            if self._disk.get(image.digest) is not image:
                continue  # evicted meanwhile
            try:
                await trio.to_thread.run_sync(
                    _verify_installed, image.path, image.digest, image.identity
                )
            except (CacheError, FileNotFoundError) as exc:
                self._quarantine(image, str(exc))
                bad.append(image.digest)
        return bad

    def contains(self, digest: str) -> bool:
        return digest in self._disk

    # -- disk pressure (driven by huselet.health.pressure) ---------------------------------

    def refuse_installs(self, reason: str | None) -> None:
        """While ``reason`` is set, installing a new image raises :class:`LowDiskSpace`.

        ``reason`` completes "refusing to install image <digest>: …", e.g.
        ``"state dir /var/lib/huselet has 3.0% free (needs 10%)"``. Images
        already installed are served as before. ``None`` accepts again.
        """
        self.installs_refused = reason

    def _check_installs_allowed(self, digest: str) -> None:
        if self.installs_refused is not None:
            self.installs_refused_count += 1
            raise LowDiskSpace(f"refusing to install image {digest}: {self.installs_refused}")

    def evict_unused(self) -> list[ImageState]:
        """Evict every installed image no lease pins (no instance uses it); return them."""
        evicted = []
        for image in list(self._disk.values()):
            if image.pins == 0:
                evicted.append(
                    ImageState(image.digest, image.path, image.size, mapped=False, pins=0)
                )
                self._evict(image)
        return evicted

    # -- inspection and per-image scrub (used by huselet.code.packages / huselet.code.scrub) ------

    def level_of(self, digest: str) -> str | None:
        """``"memory"`` if mapped, ``"disk"`` if only installed, ``None`` if absent."""
        image = self._disk.get(digest)
        if image is None:
            return None
        mapped = image.reader is not None and not image.reader.closed
        return "memory" if mapped else "disk"

    def images(self) -> list[ImageState]:
        """A snapshot of the installed images, least recently used first."""
        return [
            ImageState(
                digest=i.digest,
                path=i.path,
                size=i.size,
                mapped=i.reader is not None and not i.reader.closed,
                pins=i.pins,
            )
            for i in self._disk.values()
        ]

    async def verify_image(self, digest: str) -> str | None:
        """Re-hash one installed image; quarantine it if bad and return why.

        ``None`` when the image is good or not installed. The paced scrub loop
        calls this one image at a time; :meth:`scrub` does all at once.
        """
        image = self._disk.get(digest)
        if image is None:
            return None
        try:
            await trio.to_thread.run_sync(
                _verify_installed, image.path, image.digest, image.identity
            )
        except (CacheError, OSError) as exc:  # EIO, EACCES: unusable just the same
            if self._disk.get(digest) is image:  # not evicted meanwhile
                self._quarantine(image, str(exc))
                return str(exc)
        return None

    @property
    def stats(self) -> StoreStats:
        return replace(
            self._stats,
            disk_images=len(self._disk),
            disk_bytes=sum(i.size for i in self._disk.values()),
            mapped_images=len(self._memory),
            mapped_bytes=sum(i.size for i in self._memory.values()),
            fetches=self._fetcher.attempts_made,
            fetch_failures=self._fetcher.failed_flights,
            coalesced=self._fetcher.coalesced,
        )

    # -- installing ------------------------------------------------------------------

    async def _install(self, digest: str, origin: Origin) -> None:
        part = self.images_dir / f"{digest}.{secrets.token_hex(4)}.part"
        final = self.images_dir / fmt.image_file_name(digest)
        try:
            # A flight that started just before the disk filled up.
            self._check_installs_allowed(digest)
            await origin.fetch(digest, part, max_bytes=self.max_image_bytes)
            size = await trio.to_thread.run_sync(_verify_download, part, digest)
            self._make_room(size, digest)
            # Reserved while the rename runs, so concurrent installs see the
            # space as taken, but nobody sees the image before its file exists.
            self._reserved_bytes += size
            try:
                inode = await trio.to_thread.run_sync(_commit, part, final)
            finally:
                self._reserved_bytes -= size
            self._disk[digest] = _DiskImage(digest, final, size, inode)
            self._stats.bytes_fetched += size
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise DiskFull(
                    f"disk full while installing image {digest} in {self.images_dir}"
                ) from exc
            raise CacheError(f"cannot install image {digest}: {exc}") from exc
        finally:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(_unlink_quietly, part)

    def _make_room(self, size: int, digest: str) -> None:
        if size > self.disk_budget_bytes:
            raise ImageTooLarge(
                f"image {digest} is {size} bytes; the disk budget is {self.disk_budget_bytes}"
            )
        used = self._reserved_bytes + sum(i.size for i in self._disk.values())
        for victim in list(self._disk.values()):  # least recently used first
            if used + size <= self.disk_budget_bytes:
                break
            if victim.pins == 0:
                self._evict(victim)
                used -= victim.size
        if used + size > self.disk_budget_bytes:
            pinned = sum(i.size for i in self._disk.values() if i.pins)
            raise CacheFull(
                f"no room for image {digest} ({size} bytes): {used} of "
                f"{self.disk_budget_bytes} bytes used, {pinned} by images in use"
            )

    def _evict(self, image: _DiskImage) -> None:
        del self._disk[image.digest]
        self._forget_mapping(image)
        image.path.unlink(missing_ok=True)
        self._stats.disk_evictions += 1

    # -- memory level and pins ----------------------------------------------------------

    def _evict_memory(self) -> None:
        mapped = sum(i.size for i in self._memory.values())
        for image in list(self._memory.values()):
            if mapped <= self.memory_budget_bytes:
                break
            if image.pins == 0:
                self._forget_mapping(image)
                mapped -= image.size
                self._stats.memory_evictions += 1

    def _forget_mapping(self, image: _DiskImage) -> None:
        if self._memory.get(image.digest) is image:
            del self._memory[image.digest]
        if image.pins == 0 and image.reader is not None:
            image.reader.close()
            image.reader = None

    def _unpin(self, image: _DiskImage) -> None:
        image.pins -= 1
        if image.pins:
            return
        if self._disk.get(image.digest) is not image:
            self._forget_mapping(image)  # evicted or quarantined while leased
        else:
            self._evict_memory()

    def _quarantine(self, image: _DiskImage, reason: str) -> None:
        if self._disk.get(image.digest) is image:
            del self._disk[image.digest]
        self._forget_mapping(image)
        self._move_to_quarantine(image.path, reason)
        self._stats.quarantined += 1

    def _move_to_quarantine(self, path: Path, reason: str) -> None:
        log.error("quarantining image %s: %s", path.name, reason)
        target = self.quarantine_dir / f"{path.name}.{secrets.token_hex(3)}"
        try:
            os.rename(path, target)
        except FileNotFoundError:
            return
        kept = sorted(self.quarantine_dir.iterdir(), key=_mtime)
        for old in kept[: max(0, len(kept) - self.quarantine_keep)]:
            old.unlink(missing_ok=True)

    def _touch(self, image: _DiskImage) -> None:
        # The file's mtime carries LRU order across restarts; refresh it
        # rarely so hot images do not cost a syscall per request.
        now = trio.current_time()
        if now - image.last_touch >= _TOUCH_INTERVAL_S:
            image.last_touch = now
            try:
                os.utime(image.path)
            except OSError:
                pass


# -- blocking helpers (run in worker threads) ---------------------------------------------


def _open_installed(path: Path, digest: str, identity: tuple[int, int]) -> ImageReader:
    return ImageReader.open(path, expected_digest=digest, verify=False, expected_identity=identity)


def _verify_installed(path: Path, digest: str, identity: tuple[int, int]) -> None:
    # pread-hashed (never through a mapping): a truncation meanwhile is an error.
    reader = ImageReader.open(path, expected_digest=digest, verify=True, expected_identity=identity)
    reader.close()


def _verify_download(part: Path, digest: str) -> int:
    index = inspect_image(part, verify=True, follow_symlinks=False)
    if index.digest != digest:
        raise DigestMismatch(
            f"image digest mismatch: expected {digest}, header says {index.digest}"
        )
    return index.size


def _commit(part: Path, final: Path) -> int:
    """Rename the verified download into place, read-only; return its inode."""
    st = os.lstat(part)
    # Our private copy: nobody (not even we) writes to it again. Readable by
    # all, whatever the umask was when it was created (a process-wide umask
    # another thread narrowed would leave sandboxes unable to read their code);
    # the store's own directory is what keeps it private.
    os.chmod(part, 0o444)
    os.rename(part, final)
    fd = os.open(final.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return st.st_ino


def _unlink_quietly(path: Path) -> None:
    path.unlink(missing_ok=True)


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return 0.0
