"""Native trees of leased images (:mod:`cache.native`), extracted before any instance runs.

Done by the package manager, not in the instance: a sandbox sees the extract
root read-only. Each tree lives as long as its image is installed.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import trio

from cache import format as fmt
from cache.errors import CacheError
from cache.native import ensure_native_tree, remove_native_tree
from cache.store import ImageLease, ImageStore
from huselet.code.images import CodeUnavailable
from huselet.log import get_logger

log = get_logger("packages")  # the package manager's logger, as before the split

STALE_TEMP_S = 3600.0  # an extraction's temp dir this old belongs to a dead process


class NativeTrees:
    """Each image's extracted native tree, verified once per image per daemon run."""

    def __init__(self, store: ImageStore, extract_root: Path) -> None:
        self.store = store
        self.extract_root = extract_root
        self._native: dict[str, str | None] = {}  # digest -> its verified native tree
        self._native_locks: dict[str, trio.Lock] = {}

    async def tree(self, lease: ImageLease) -> str | None:
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
                    await trio.to_thread.run_sync(self.sweep)
        self._native_locks.pop(lease.digest, None)
        return self._native[lease.digest]

    def sweep(self) -> None:
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
