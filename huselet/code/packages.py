"""Function code for instances: each function's package resolved to a leased image.

:class:`PackageManager` is the pool's :class:`~huselet.dispatch.instance.CodeProvider`. A
function names its code in one of three ways (:mod:`huselet.config.functions`):

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

Beside this module: :mod:`~huselet.code.images` (what an instance gets),
:mod:`~huselet.code.origins` (image files as origins),
:mod:`~huselet.code.nativetrees` (extracted native files) and
:mod:`~huselet.code.usage` (records, events and ``ctl cache``).
"""

from __future__ import annotations

import os
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import trio

from cache.errors import CacheError
from cache.origin import DirectoryOrigin, Origin, origin_from_url
from cache.store import ImageLease, ImageStore
from huselet.code.dependencies import DependencyOptions
from huselet.code.images import (
    PLAIN_DIRECTORY,
    CodeUnavailable,
    ImageCode,
    PlainDirectory,
    caller_reason,
)
from huselet.code.nativetrees import NativeTrees
from huselet.code.origins import SingleFileOrigin, image_digest
from huselet.code.packing import DirectoryPacker, PackResult
from huselet.code.prefetch import LiveFetches
from huselet.code.usage import CacheBookkeeping, ImageUsage, Resolved
from huselet.config import Config, FunctionSettings, LayerSettings
from huselet.log import get_logger

log = get_logger("packages")

MAX_EVENTS = 64  # recent cache events shown by `huselet ctl cache`
REPACK_AFTER_FAILURE_S = 5.0  # a failed pack is retried by the next start after this
REFRESH_WAIT_S = 120.0  # the longest a reload may wait for re-packs (pip may be running)


class PackageManager(CacheBookkeeping):
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
        self.native_trees = NativeTrees(store, self.extract_root)
        self.functions = {fn.name: fn for fn in config.functions}
        self._dirs: dict[Path, Resolved] = {}
        self._files: dict[Path, Resolved] = {}
        self._origins: dict[str, Origin] = {}
        self._usage: OrderedDict[str, ImageUsage] = OrderedDict()
        self.events: deque[dict[str, Any]] = deque(maxlen=MAX_EVENTS)
        self._build_lock = trio.Lock()  # one image built at a time: CPU- and disk-bound
        self._pip_slots = trio.CapacityLimiter(self.settings.pip_concurrency)
        self._nursery: trio.Nursery | None = None
        # Set once running: an acquire before that (fork's eager zygotes) waits for it.
        self._running = trio.Event()
        # Set by the daemon to the prefetcher's hint: how a quarantined image comes back.
        self.refetch: Callable[[str, Origin], object] | None = None
        # Set by the daemon: redeploys functions whose code changed (see _announce).
        self.on_code_changed: Callable[[set[str]], object] | None = None
        self._repacking: dict[Path, Resolved] = {}  # re-packs in flight (current image serves)
        self._repack_again: set[Path] = set()
        self._origin_waits: dict[str, int] = {}  # digest -> starts waiting on its fetch

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Start packing directory packages in the background, then serve until cancelled."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            if self.settings.pack_directories:
                for fn in self.config.functions:
                    if fn.code_source == "package" and fn.package not in self._dirs:
                        self._dirs[fn.package] = Resolved()
                        nursery.start_soon(self._pack, fn.package)
            self._running.set()
            task_status.started()
            await trio.sleep_forever()

    # -- the CodeProvider protocol -------------------------------------------------------

    async def acquire(self, fn: FunctionSettings) -> ImageCode | PlainDirectory:
        if not self._running.is_set():
            await self._running.wait()  # bounded by the caller, as every acquire is
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
            native = [await self.native_trees.tree(lease) for lease in leases]
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

    async def _lease(
        self, fn: FunctionSettings, digest: str, origin: Origin, source: str
    ) -> ImageLease:
        usage = self._track(digest, origin, source, fn.name)
        level = self.store.level_of(digest) or "origin"
        usage.hits[level] += 1
        # A request waits on a cold fetch: prefetching steps aside until it is done.
        guard = self.live.fetching() if level == "origin" else nullcontext()
        started = trio.current_time()
        # Starts that find the image at its origin all wait for one fetch: the
        # first of them logs it once, with how many waited (not a line per start).
        first = level == "origin" and digest not in self._origin_waits
        if level == "origin":
            self._origin_waits[digest] = self._origin_waits.get(digest, 0) + 1
        waited = 0
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
        finally:
            if first:
                waited = self._origin_waits.pop(digest, 1)
        usage.last_used = time.time()
        if first:
            log.info(
                "image fetched",
                function=fn.name,
                digest=digest,
                bytes=_size(lease.path),
                files=len(lease.reader),
                ms=round((trio.current_time() - started) * 1000, 1),
                starts=waited,
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
            resolved = self._dirs[fn.package] = Resolved()
            self._start_pack(fn.package)
        elif resolved.error and trio.current_time() - resolved.failed_at > REPACK_AFTER_FAILURE_S:
            # The developer may have fixed the tree since; try again for this start.
            self._dirs[fn.package] = resolved = Resolved()
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

    def packing(self, functions: Iterable[FunctionSettings]) -> list[str]:
        """Those of ``functions`` whose package directory is being (re-)packed now."""
        busy = set(self._repacking)
        busy |= {d for d, resolved in self._dirs.items() if not resolved.ready.is_set()}
        return sorted(fn.name for fn in functions if fn.package in busy)

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
            self._dirs[directory] = Resolved()
            self._start_pack(directory)
            return self._dirs[directory].ready
        resolved = self._repacking[directory] = Resolved()
        self._start_pack(directory, resolved)
        return resolved.ready

    def _start_pack(self, directory: Path, target: Resolved | None = None) -> None:
        if self._nursery is None:
            raise CodeUnavailable("the package cache is not running")
        self._nursery.start_soon(self._pack, directory, target)

    async def _pack(self, directory: Path, target: Resolved | None = None) -> None:
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
        """Pack (or reuse the unchanged pack of) ``directory``.

        Images are built one at a time (CPU- and disk-bound), but pip runs
        outside that lock, up to ``cache.pip_concurrency`` at once: one
        package's slow or hanging index (pip may take ``pip_timeout_s``) must
        not hold up the packs — and so the first starts — of every other
        function on the node. A tree whose requirements are installed already
        needs no pip slot at all.
        """
        # Cancellable (a stopping daemon must not wait out pip's deadline): the
        # thread is abandoned and told to kill pip, which it does within 0.2 s.
        cancel = threading.Event()
        packer = self.packer
        try:
            plan = await trio.to_thread.run_sync(packer.plan, directory, abandon_on_cancel=True)
            if isinstance(plan, PackResult):
                return plan
            if await trio.to_thread.run_sync(packer.needs_pip, directory):
                async with self._pip_slots:
                    tree = await trio.to_thread.run_sync(
                        packer.install, directory, cancel, abandon_on_cancel=True
                    )
            else:
                tree = await trio.to_thread.run_sync(packer.install, directory, cancel)
            async with self._build_lock:
                return await trio.to_thread.run_sync(
                    packer.build, directory, plan, tree, abandon_on_cancel=True
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
        resolved = self._files.setdefault(path, Resolved())
        try:
            st = os.stat(path)
            stamp = (st.st_ino, st.st_size, st.st_mtime_ns)
        except OSError:
            stamp = None  # gone: keep serving the copy already installed, if any
        if stamp is not None and stamp != resolved.stamp:
            try:
                digest = await trio.to_thread.run_sync(image_digest, path)
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


def _log_progress(report: dict[str, Any]) -> None:
    """Packing and pip progress (called from the packing thread; logging is thread-safe)."""
    log.info("packing progress", **report)


def _size(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except OSError:
        return None
