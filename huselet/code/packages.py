"""Function code for instances: each function's package resolved to a leased image.

:class:`PackageManager` is the pool's :class:`~huselet.dispatch.instance.CodeProvider`. A
function names its code in one of three ways (``huselet/config.py``):

- ``package = "dir"`` — packed into an image when the daemon loads (for
  development: the same import path as production). Packing runs in the
  background, once per distinct directory, and is skipped on restart when the
  tree is unchanged (:mod:`huselet.code.packing`). With ``cache.pack_directories =
  false`` the directory is served as it is (no image).
- ``image = "x.hlimg"`` — an image file; installed into the store (so scrub,
  LRU and the memory level apply). Re-read when the file changes, so
  ``huselet pack`` over it takes effect for the next instance without a restart.
- ``digest`` + ``origin`` — fetched from the origin on first use.

Levels: a start finds the image mapped (*memory*), installed (*disk*) or
fetches it (*origin*); hits per level are counted per image. Every image an
instance uses stays leased — pinned on disk and mapped — until the instance
ends, so functions with instances stay hot.

Errors reach callers as :class:`CodeUnavailable` with a message that names the
image and the kind of failure but no host path or origin URL (those go to the
log), e.g. ``image 3fa2c1d0e5b7 is not at its origin``.
"""

from __future__ import annotations

import os
import re
import shutil
import threading
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Iterable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from cache import format as fmt
from cache.errors import (
    CacheError,
    CacheFull,
    CorruptImage,
    DiskFull,
    FetchError,
    ImageNotFound,
    ImageTooLarge,
    TransientFetchError,
)
from cache.native import ensure_native_tree, remove_native_tree
from cache.origin import DirectoryOrigin, ImageSink, Origin, origin_from_url
from cache.reader import inspect_image
from cache.safeio import open_regular
from cache.store import ImageLease, ImageStore, LowDiskSpace
from huselet.code.dependencies import DependencyOptions
from huselet.code.packing import DirectoryPacker, PackResult
from huselet.code.prefetch import LiveFetches
from huselet.config import Config, FunctionSettings, LayerSettings
from huselet.errors import HuseletError
from huselet.log import get_logger
from huselet.runtime.codeimage import CodeImage

log = get_logger("packages")

MAX_EVENTS = 64  # recent cache events shown by `huselet ctl cache`
MAX_LISTED = 2000  # image rows in one `ctl cache` reply (the admin frame is bounded)
MAX_TRACKED_IMAGES = 4096  # usage records for images no function config names
REPACK_AFTER_FAILURE_S = 5.0  # a failed pack is retried by the next start after this
STALE_TEMP_S = 3600.0  # an extraction's temp dir this old belongs to a dead process
REFRESH_WAIT_S = 120.0  # a reload waits this long for re-packs (pip may be running)
_COPY_CHUNK = 1 << 20


class CodeUnavailable(HuseletError):
    """A function's image cannot be had; the pool answers its requests with 502."""

    status, code = 502, "code_unavailable"


class PlainDirectory:
    """The code of a ``package`` directory served as it is: nothing to lease."""

    image: Path | None = None
    digest: str | None = None
    layers: tuple[str, ...] = ()

    def release(self) -> None:
        pass


PLAIN_DIRECTORY = PlainDirectory()


class ImageCode:
    """An image (and the function's layers) leased for one instance's lifetime."""

    __slots__ = ("_leases", "digest", "image", "layers")

    def __init__(
        self, leases: list[ImageLease], native_dirs: tuple[str, ...], extract_root: Path
    ) -> None:
        main, *layers = leases
        self.image: Path | None = CodeImage.make(
            main.path,
            layers=tuple(str(lease.path) for lease in layers),
            native_dirs=native_dirs,
            extract_root=str(extract_root),
        )
        self.digest = main.digest
        self.layers = tuple(lease.digest for lease in layers)
        self._leases = leases

    def release(self) -> None:
        for lease in self._leases:
            lease.release()


class SingleFileOrigin(Origin):
    """One image file under any name (``image = "build/app.hlimg"``, a published file)."""

    def __init__(self, path: Path, *, follow_symlinks: bool = True) -> None:
        self.path = path
        self.follow_symlinks = follow_symlinks  # False for files dropped by others

    def describe(self) -> str:
        return str(self.path)

    async def fetch(self, digest: str, dest: Path, *, max_bytes: int) -> int:
        return await trio.to_thread.run_sync(self._copy, dest, max_bytes)

    def _copy(self, dest: Path, max_bytes: int) -> int:
        try:
            # Streamed into the store's own copy (never mapped): a FIFO fails at
            # once, a file truncated meanwhile fails verification, no SIGBUS.
            fd = open_regular(self.path, follow_symlinks=self.follow_symlinks)
            source = open(fd, "rb", closefd=True)  # noqa: SIM115  (closed below)
        except FileNotFoundError:
            raise ImageNotFound(f"image file {self.path} does not exist") from None
        except OSError as exc:
            raise FetchError(f"cannot read {self.path}: {exc.strerror}") from exc
        with source:
            sink = ImageSink(dest, max_bytes, str(self.path))
            try:
                while chunk := source.read(_COPY_CHUNK):
                    trio.from_thread.check_cancelled()
                    sink.write(chunk)
                return sink.finish()
            except BaseException:
                sink.abort()
                raise


@dataclass
class ImageUsage:
    """What the node knows about one image beyond the store: who uses it, how it is hit."""

    origin: Origin | None = None
    source: str = ""  # "package", "image", "digest", "published", "hint"
    functions: set[str] = field(default_factory=set)
    hits: Counter[str] = field(default_factory=Counter)  # by level: memory, disk, origin
    last_used: float | None = None  # wall-clock time of the last lease


@dataclass
class _Resolved:
    """How one code source (a directory, an image file) maps to a digest right now."""

    digest: str | None = None
    origin: Origin | None = None
    ready: trio.Event = field(default_factory=trio.Event)
    error: str | None = None  # caller-safe: why there is no digest
    failed_at: float = 0.0
    stamp: tuple[int, int, int] | None = None  # (ino, size, mtime_ns) of an image file


def caller_reason(exc: CacheError) -> str:
    """What went wrong, for a caller: the kind of failure without paths or URLs."""
    if isinstance(exc, ImageNotFound):
        reason = "is not at its origin"
    elif isinstance(exc, ImageTooLarge):
        reason = "is larger than this node accepts"
    elif isinstance(exc, LowDiskSpace):
        reason = "cannot be installed now: the node's disk is nearly full"
    elif isinstance(exc, DiskFull):
        reason = "cannot be installed: the node's disk is full"
    elif isinstance(exc, CacheFull):
        reason = "cannot be installed: the node's image cache is full of images in use"
    elif isinstance(exc, CorruptImage):
        reason = "came corrupt from its origin"
    elif isinstance(exc, TransientFetchError):
        reason = "could not be fetched: its origin is unreachable or failing"
    elif isinstance(exc, FetchError):
        reason = "could not be fetched: its origin refused it"
    else:
        reason = "could not be installed"
    cooling = re.search(r"\(not retrying for ([0-9.]+)s\)", str(exc))
    if cooling:
        reason += f" (next attempt in {cooling.group(1)}s)"
    return reason


class PackageManager:
    """Resolves functions to images and leases them to instances. Start with :meth:`run`."""

    def __init__(
        self,
        config: Config,
        store: ImageStore,
        *,
        live: LiveFetches | None = None,
        packer: DirectoryPacker | None = None,
    ) -> None:
        self.config = config
        self.settings = config.cache
        self.store = store
        self.live = live or LiveFetches()
        self.packer = packer or DirectoryPacker(
            store.images_dir.parent / "packed",
            DependencyOptions(
                cache_dir=store.images_dir.parent,
                allow_sdist=self.settings.allow_sdist,
                timeout_s=self.settings.pip_timeout_s,
            ),
            progress=_log_progress,
        )
        self.packed_origin = DirectoryOrigin(self.packer.out_dir)
        self.extract_root = store.images_dir.parent / "extract"
        self._native: dict[str, str | None] = {}  # digest -> its verified native tree
        self._native_locks: dict[str, trio.Lock] = {}
        self.functions = {fn.name: fn for fn in config.functions}
        self._dirs: dict[Path, _Resolved] = {}
        self._files: dict[Path, _Resolved] = {}
        self._origins: dict[str, Origin] = {}
        self._usage: OrderedDict[str, ImageUsage] = OrderedDict()
        self.events: deque[dict[str, Any]] = deque(maxlen=MAX_EVENTS)
        self._pack_lock = trio.Lock()  # one pack at a time: it is CPU- and disk-bound
        self._nursery: trio.Nursery | None = None
        # Set by the daemon to the prefetcher's hint: how a quarantined image comes back.
        self.refetch: Callable[[str, Origin], object] | None = None
        # Set by the daemon: redeploys functions whose code changed (see _announce).
        self.on_code_changed: Callable[[set[str]], object] | None = None
        self._repacking: dict[Path, _Resolved] = {}  # re-packs in flight (current image serves)
        self._repack_again: set[Path] = set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Start packing directory packages in the background, then serve until cancelled."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            if self.settings.pack_directories:
                for fn in self.config.functions:
                    if fn.code_source == "package" and fn.package not in self._dirs:
                        self._dirs[fn.package] = _Resolved()
                        nursery.start_soon(self._pack, fn.package)
            task_status.started()
            await trio.sleep_forever()

    # -- the CodeProvider protocol -------------------------------------------------------

    async def acquire(self, fn: FunctionSettings) -> ImageCode | PlainDirectory:
        self.functions[fn.name] = fn  # functions deployed at runtime are learnt here
        source = await self.resolve(fn)
        if source is None:
            if fn.layers:
                raise CodeUnavailable("layers need packed code (cache.pack_directories is off)")
            return PLAIN_DIRECTORY
        leases = [await self._lease(fn, *source, fn.code_source)]
        try:
            for layer in fn.layers:
                leases.append(await self._lease(fn, *await self._resolve_layer(fn, layer), "layer"))
            native = [await self._native_tree(lease) for lease in leases]
        except BaseException:
            for lease in leases:
                lease.release()
            raise
        trees = tuple(tree for tree in native if tree is not None)
        return ImageCode(leases, trees, self.extract_root)

    async def _resolve_layer(
        self, fn: FunctionSettings, layer: LayerSettings
    ) -> tuple[str, Origin]:
        if layer.image is None:
            assert layer.digest is not None
            return layer.digest, self._origin(layer.origin)
        digest, origin = await self._resolve_image_file(layer.image, fn.name, what="layer image")
        if layer.digest is not None and digest != layer.digest:
            log.error(
                "layer image is not the pinned digest",
                function=fn.name,
                expected=layer.digest,
                found=digest,
            )
            raise CodeUnavailable(
                f"layer image {digest[:12]} is not the pinned {layer.digest[:12]}"
            )
        return digest, origin

    async def _native_tree(self, lease: ImageLease) -> str | None:
        """The image's extracted native tree (cache/native.py), made before any instance needs it.

        Done here, not in the instance: a sandbox sees the extract root read-only.
        Verified once per image per daemon run, then trusted.
        """
        if lease.digest in self._native:
            return self._native[lease.digest]
        lock = self._native_locks.setdefault(lease.digest, trio.Lock())
        async with lock:
            if lease.digest not in self._native:
                try:
                    tree = await trio.to_thread.run_sync(
                        lambda: ensure_native_tree(
                            lease.reader, str(self.extract_root), verify_existing=True
                        )
                    )
                except (OSError, CacheError) as exc:
                    log.error("cannot extract native files", digest=lease.digest, error=str(exc))
                    raise CodeUnavailable(
                        f"image {lease.digest[:12]}: its native files could not be extracted"
                    ) from None
                self._native[lease.digest] = tree
                if tree is not None:
                    log.info("native files extracted", digest=lease.digest, tree=tree)
                    # A new tree: drop those of images no longer in the store.
                    await trio.to_thread.run_sync(self._sweep_native_trees)
        self._native_locks.pop(lease.digest, None)
        return self._native[lease.digest]

    def _sweep_native_trees(self) -> None:
        """Bound extract/: a tree lives as long as its image is installed (evicted: removed).

        In-use images are pinned in the store, so their trees stay; temp dirs of
        an extraction that died are removed once an hour old.
        """
        try:
            names = os.listdir(self.extract_root)
        except OSError:
            return
        for name in names:
            path = self.extract_root / name
            if fmt.is_digest_hex(name):
                if not self.store.contains(name):
                    remove_native_tree(str(self.extract_root), name)
                    self._native.pop(name, None)
            elif name.endswith((".tmp", ".old")):
                try:
                    stale = time.time() - path.stat().st_mtime > STALE_TEMP_S
                except OSError:
                    continue
                if stale:
                    shutil.rmtree(path, ignore_errors=True)

    async def _lease(
        self, fn: FunctionSettings, digest: str, origin: Origin, source: str
    ) -> ImageLease:
        usage = self._track(digest, origin, source, fn.name)
        level = self.store.level_of(digest) or "origin"
        usage.hits[level] += 1
        # A request waits on a cold fetch: prefetching steps aside until it is done.
        guard = self.live.fetching() if level == "origin" else nullcontext()
        started = trio.current_time()
        try:
            with guard:
                lease = await self.store.get(digest, origin)
        except CacheError as exc:
            self.note("fetch_failed", digest, str(exc), function=fn.name)
            log.warning(
                "image not available",
                function=fn.name,
                digest=digest,
                origin=origin.describe(),
                error=str(exc),
            )
            raise CodeUnavailable(f"image {digest[:12]} {caller_reason(exc)}") from None
        except Exception as exc:
            # EMFILE, EACCES, a bug: the pool only understands HuseletError, and
            # anything else escaping would take the whole pool down.
            self.note("fetch_failed", digest, repr(exc), function=fn.name)
            log.exception("image could not be leased", function=fn.name, digest=digest)
            raise CodeUnavailable(
                f"image {digest[:12]} could not be opened; see the node log"
            ) from None
        usage.last_used = time.time()
        if level == "origin":
            log.info(
                "image fetched",
                function=fn.name,
                digest=digest,
                bytes=_size(lease.path),
                files=len(lease.reader),
                ms=round((trio.current_time() - started) * 1000, 1),
            )
        return lease

    def source_of(self, name: str) -> tuple[str, Origin] | None:
        """The function's (digest, origin) if known without waiting; for prediction and hints."""
        fn = self.functions.get(name)
        if fn is None:
            return None
        if fn.code_source == "digest":
            assert fn.digest is not None
            return fn.digest, self._origin(fn.origin)
        resolved = self._files.get(fn.image) if fn.image is not None else self._dirs.get(fn.package)
        if resolved is None or resolved.digest is None or resolved.origin is None:
            return None
        return resolved.digest, resolved.origin

    # -- resolving -------------------------------------------------------------------------

    async def resolve(self, fn: FunctionSettings) -> tuple[str, Origin] | None:
        """(digest, origin) of the function's image; None for a plain directory.

        Waits for a pack in progress (callers bound the wait); raises
        :class:`CodeUnavailable` when there is no image to be had.
        """
        if fn.code_source == "digest":
            assert fn.digest is not None
            return fn.digest, self._origin(fn.origin)
        if fn.code_source == "image":
            assert fn.image is not None
            return await self._resolve_file(fn)
        if not self.settings.pack_directories:
            return None
        resolved = self._dirs.get(fn.package)
        if resolved is None:  # a function added after start
            resolved = self._dirs[fn.package] = _Resolved()
            self._start_pack(fn.package)
        elif resolved.error and trio.current_time() - resolved.failed_at > REPACK_AFTER_FAILURE_S:
            # The developer may have fixed the tree since; try again for this start.
            self._dirs[fn.package] = resolved = _Resolved()
            self._start_pack(fn.package)
        await resolved.ready.wait()  # bounded by the pool's start deadline
        if resolved.digest is None or resolved.origin is None:
            raise CodeUnavailable(resolved.error or "its package could not be packed")
        return resolved.digest, resolved.origin

    async def refresh(
        self, functions: Iterable[FunctionSettings], *, wait_s: float = REFRESH_WAIT_S
    ) -> set[str]:
        """Look again at the code of ``functions`` (a reload, a save under watch).

        Package directories are re-packed (an unchanged tree reuses its pack, so
        this is cheap) and image files re-read. Until a re-pack is done, new
        instances keep getting the current image. A function whose digest
        changed is announced to :attr:`on_code_changed`, which redeploys it.
        Waits up to ``wait_s`` for the packs; returns the functions whose code
        changed meanwhile (a slower pack still announces its change when done).
        """
        functions = list(functions)
        before = {fn.name: self._digest_of(fn) for fn in functions}
        waits: list[trio.Event] = []
        if self.settings.pack_directories and self._nursery is not None:
            for directory in sorted(
                {fn.package for fn in functions if fn.code_source == "package"}
            ):
                waits.append(self._repack(directory))
        files = {fn.image for fn in functions if fn.image is not None}
        files |= {layer.image for fn in functions for layer in fn.layers if layer.image}
        for path in sorted(files):
            try:
                await self._resolve_image_file(path, "", what="image file")
            except CodeUnavailable:
                pass  # logged; instances keep the copy installed, if any
        with trio.move_on_after(wait_s):
            for event in waits:
                await event.wait()
        return {fn.name for fn in functions if self._digest_of(fn) != before[fn.name]}

    def _digest_of(self, fn: FunctionSettings) -> tuple[str | None, ...]:
        """The function's code as currently resolved: its digest and its layers' image digests."""
        if fn.code_source == "digest":
            main = fn.digest
        elif fn.image is not None:
            main = self._files[fn.image].digest if fn.image in self._files else None
        else:
            main = self._dirs[fn.package].digest if fn.package in self._dirs else None
        layers = tuple(
            self._files[layer.image].digest
            if layer.image is not None and layer.image in self._files
            else layer.digest
            for layer in fn.layers
        )
        return (main, *layers)

    def _repack(self, directory: Path) -> trio.Event:
        """Pack ``directory`` again; the current image serves until the new one is ready."""
        running = self._repacking.get(directory)
        if running is not None:
            self._repack_again.add(directory)  # edited while packing: pack once more after
            return running.ready
        current = self._dirs.get(directory)
        if current is None or not current.ready.is_set() or current.digest is None:
            # Nothing usable to keep serving: starts wait for this pack, as at load.
            self._dirs[directory] = _Resolved()
            self._start_pack(directory)
            return self._dirs[directory].ready
        resolved = self._repacking[directory] = _Resolved()
        self._start_pack(directory, resolved)
        return resolved.ready

    def _start_pack(self, directory: Path, target: _Resolved | None = None) -> None:
        if self._nursery is None:
            raise CodeUnavailable("the package cache is not running")
        self._nursery.start_soon(self._pack, directory, target)

    async def _pack(self, directory: Path, target: _Resolved | None = None) -> None:
        resolved = target or self._dirs[directory]
        previous = self._dirs.get(directory)
        previous_digest = previous.digest if previous is not None else None
        started = trio.current_time()
        try:
            result = await self.pack_directory(directory)
        except (CacheError, OSError) as exc:
            resolved.error = "its package directory could not be packed; see the node log"
            resolved.failed_at = trio.current_time()
            self.note("pack_failed", None, str(exc), source=str(directory))
            log.error("cannot pack package directory", directory=str(directory), error=str(exc))
        else:
            resolved.digest, resolved.origin = result.digest, self.packed_origin
            names = {fn.name for fn in self.functions.values() if fn.package == directory}
            names |= {fn.name for fn in self.config.functions if fn.package == directory}
            for name in names:
                self._track(result.digest, self.packed_origin, "package", name)
            log.info(
                "package packed",
                directory=str(directory),
                digest=result.digest,
                size=result.size,
                reused=result.reused,
                ms=round((trio.current_time() - started) * 1000, 1),
            )
            if target is not None:
                self._dirs[directory] = resolved  # new starts get the new image from now on
            if previous_digest is not None and previous_digest != result.digest:
                self._announce(names, result.digest)
        finally:
            resolved.ready.set()
            if target is not None and self._repacking.get(directory) is target:
                del self._repacking[directory]
                if directory in self._repack_again:
                    self._repack_again.discard(directory)
                    self._repack(directory)

    def _announce(self, names: Iterable[str], digest: str) -> None:
        """Functions whose code is now ``digest``: their new requests go to new instances."""
        names = sorted(names)
        self.note("code_changed", digest, "new instances run the new code", functions=names)
        log.info("function code changed", functions=names, digest=digest)
        if self.on_code_changed is not None and names:
            self.on_code_changed(set(names))

    async def pack_directory(self, directory: Path) -> PackResult:
        """Pack (or reuse the unchanged pack of) ``directory``, one pack at a time."""
        async with self._pack_lock:
            # Cancellable (a stopping daemon must not wait out pip's deadline): the
            # thread is abandoned and told to kill pip, which it does within 0.2 s.
            cancel = threading.Event()
            try:
                return await trio.to_thread.run_sync(
                    lambda: self.packer.pack(directory, cancel), abandon_on_cancel=True
                )
            except trio.Cancelled:
                cancel.set()
                raise

    async def _resolve_file(self, fn: FunctionSettings) -> tuple[str, Origin]:
        assert fn.image is not None
        return await self._resolve_image_file(fn.image, fn.name)

    async def _resolve_image_file(
        self, path: Path, name: str, what: str = "image file"
    ) -> tuple[str, Origin]:
        resolved = self._files.setdefault(path, _Resolved())
        try:
            st = os.stat(path)
            stamp = (st.st_ino, st.st_size, st.st_mtime_ns)
        except OSError:
            stamp = None  # gone: keep serving the copy already installed, if any
        if stamp is not None and stamp != resolved.stamp:
            try:
                digest = await trio.to_thread.run_sync(_image_digest, path)
            except (CacheError, OSError) as exc:
                log.error("cannot read function image", function=name, error=str(exc))
                if resolved.digest is None:
                    raise CodeUnavailable(f"its {what} is not a usable image") from None
            else:
                previous = resolved.digest
                resolved.digest, resolved.stamp = digest, stamp
                resolved.origin = SingleFileOrigin(path)
                if previous not in (None, digest):
                    self._announce(self._users_of(path), digest)
        if resolved.digest is None or resolved.origin is None:
            raise CodeUnavailable(f"its {what} does not exist")
        return resolved.digest, resolved.origin

    def _users_of(self, path: Path) -> set[str]:
        """Functions whose code or layers are the image file ``path``."""
        return {
            fn.name
            for fn in [*self.config.functions, *self.functions.values()]
            if fn.image == path or any(layer.image == path for layer in fn.layers)
        }

    def _origin(self, url: str | None) -> Origin:
        url = url or self.settings.default_origin
        if url is None:  # config validation prevents this
            raise CodeUnavailable("it names no origin")
        origin = self._origins.get(url)
        if origin is None:
            origin = self._origins[url] = origin_from_url(url)
        return origin

    # -- bookkeeping ----------------------------------------------------------------------------

    def _track(
        self, digest: str, origin: Origin | None, source: str, function: str | None = None
    ) -> ImageUsage:
        usage = self._usage.get(digest)
        if usage is None:
            usage = self._usage[digest] = ImageUsage(origin=origin, source=source)
            self._trim_usage()
        elif origin is not None:
            usage.origin = origin
        if function is not None:
            usage.functions.add(function)
        self._usage.move_to_end(digest)
        return usage

    def _trim_usage(self) -> None:
        configured = len(self.config.functions)
        for digest in list(self._usage):
            if len(self._usage) <= MAX_TRACKED_IMAGES + configured:
                break
            if not self._usage[digest].functions and not self.store.contains(digest):
                del self._usage[digest]

    def origin_of(self, digest: str) -> Origin | None:
        usage = self._usage.get(digest)
        return usage.origin if usage else None

    def remember(self, digest: str, origin: Origin, source: str) -> None:
        """An image learnt of outside function configs (published, hinted): keep its origin."""
        self._track(digest, origin, source)

    def note(self, kind: str, digest: str | None, detail: str, **fields: Any) -> None:
        """Record a cache event for ``huselet ctl cache`` (bounded)."""
        self.events.append(
            {"time": time.time(), "kind": kind, "digest": digest, "detail": detail, **fields}
        )

    def image_corrupt(self, digest: str, reason: str) -> None:
        """The scrub quarantined ``digest``: report it and fetch it again if we know from where."""
        usage = self._usage.get(digest)
        self.note("quarantined", digest, reason)
        log.error(
            "image quarantined",
            digest=digest,
            reason=reason,
            functions=sorted(usage.functions) if usage else [],
        )
        if usage is not None and usage.origin is not None and self.refetch is not None:
            try:
                self.refetch(digest, usage.origin)
            except HuseletError as exc:
                log.warning("cannot queue refetch", digest=digest, error=exc.message)

    # -- inspection ------------------------------------------------------------------------------

    def describe(self) -> dict[str, Any]:
        """``huselet ctl cache``: images per level, most recently used first."""
        rows = []
        installed = set()
        for image in reversed(self.store.images()):
            installed.add(image.digest)
            usage = self._usage.get(image.digest) or ImageUsage()
            rows.append(
                self._row(image.digest, "memory" if image.mapped else "disk", usage, image.size)
                | {"pins": image.pins, "last_used": usage.last_used or _mtime(image.path)}
            )
        for digest, usage in reversed(self._usage.items()):
            if digest not in installed and usage.functions:
                rows.append(self._row(digest, "origin", usage, None))
        packing = sorted(str(d) for d, r in self._dirs.items() if not r.ready.is_set())
        return {
            "images": rows[:MAX_LISTED],
            "truncated": max(0, len(rows) - MAX_LISTED),
            "packing": packing,
            "budgets": {
                "disk_bytes": self.store.disk_budget_bytes,
                "memory_bytes": self.store.memory_budget_bytes,
            },
            "stats": self.stats(),
            "events": list(self.events),
        }

    def _row(self, digest: str, level: str, usage: ImageUsage, size: int | None) -> dict[str, Any]:
        return {
            "digest": digest,
            "level": level,
            "size": size,
            "functions": sorted(usage.functions),
            "source": usage.source,
            "hits": dict(usage.hits),
            "last_used": usage.last_used,
            "pins": 0,
        }

    def stats(self) -> dict[str, Any]:
        """Hit and miss counters per level, for ``status``."""
        s = self.store.stats
        return {
            "memory": {
                "hits": s.memory_hits,
                "misses": s.memory_misses,
                "images": s.mapped_images,
                "bytes": s.mapped_bytes,
                "evictions": s.memory_evictions,
            },
            "disk": {
                "hits": s.disk_hits,
                "misses": s.disk_misses,
                "images": s.disk_images,
                "bytes": s.disk_bytes,
                "evictions": s.disk_evictions,
            },
            "origin": {
                "fetches": s.fetches,
                "failures": s.fetch_failures,
                "coalesced": s.coalesced,
                "bytes": s.bytes_fetched,
            },
            "quarantined": s.quarantined,
        }


def _log_progress(report: dict[str, Any]) -> None:
    """Packing and pip progress (called from the packing thread; logging is thread-safe)."""
    log.info("packing progress", **report)


def _image_digest(path: Path) -> str:
    """The digest an image file declares (header and index checked; the store hashes it).

    Read with ``pread``, never mapped: the file is the operator's, not ours.
    """
    return inspect_image(path, verify=False).digest


def _size(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except OSError:
        return None


def _mtime(path: Path) -> float | None:
    try:
        return path.stat().st_mtime
    except OSError:
        return None
