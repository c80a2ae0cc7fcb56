"""Pack source directories into images once, not once per start.

:class:`DirectoryPacker` packs a tree into ``<out_dir>/<digest>.hlimg`` and
remembers, per source directory, a *fingerprint* of the tree — paths, sizes,
modes, mtimes, ctimes and inodes, what git's index uses to notice edits — next
to the digest it produced. A restart with an unchanged tree reuses the image
without reading a byte of the sources; an edited tree is packed again and its
old image deleted. ``out_dir`` doubles as a local origin, so an image evicted
or quarantined from the store is installed again without repacking.

Used for ``package = "dir"`` functions (packed on load, for development), for
directories dropped into the publish directory, and by ``huselet pack``: all
three go through :func:`build_image`, so the same tree (and the same wheels
for its ``requirements.txt``, see :mod:`huselet.code.dependencies`) gives the same
image digest whoever packs it.

Blocking by design: callers run :meth:`DirectoryPacker.pack` (or its three
steps, :meth:`~DirectoryPacker.plan`, :meth:`~DirectoryPacker.install` and
:meth:`~DirectoryPacker.build`) in worker threads. The daemon builds one image
at a time (CPU- and disk-bound) but lets several pips wait on the network at
once, so one package's slow index never holds up another's pack.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import threading
import time
from dataclasses import dataclass
from importlib.util import MAGIC_NUMBER
from pathlib import Path
from typing import Any

from cache import format as fmt
from cache.builder import ImageInfo, pack_directory
from cache.importer import DEPS_DIR
from huselet.code.dependencies import (
    DependencyOptions,
    Progress,
    install_requirements,
    requirements_key,
)
from huselet.log import get_logger

log = get_logger("packing")

INDEX_NAME = "index.json"
MAX_INDEX_ENTRIES = 1024  # bound on remembered source trees (oldest use first out)
# The builder leaves these out of images, so edits inside them never matter.
_SKIPPED_DIRS = frozenset({"__pycache__", ".git", ".hg", ".svn"})


@dataclass(frozen=True, slots=True)
class PackResult:
    digest: str
    size: int
    path: Path
    reused: bool  # True: the tree was unchanged and its earlier image reused


def tree_fingerprint(root: Path) -> str:
    """A hash of everything about ``root`` that can change what the builder writes.

    Stats only, no reads: ~10 µs per file. The interpreter's bytecode magic and
    the image format version are included, since an upgrade changes the image.
    """
    h = hashlib.sha256(
        f"{fmt.FORMAT_VERSION}\0{sys.implementation.cache_tag}\0{MAGIC_NUMBER.hex()}\0".encode()
    )
    seen: set[tuple[int, int]] = set()  # (dev, ino) of directories: stops symlink loops
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        st = os.stat(dirpath)
        if (st.st_dev, st.st_ino) in seen:
            dirnames[:] = []
            continue
        seen.add((st.st_dev, st.st_ino))
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIPPED_DIRS)
        rel_dir = os.path.relpath(dirpath, root)
        h.update(f"d\0{rel_dir}\0{st.st_mode}\0".encode())
        for name in sorted(filenames):
            if name.endswith((".pyc", ".pyo")):
                continue
            try:
                fst = os.stat(os.path.join(dirpath, name))
            except FileNotFoundError:
                continue  # a dangling symlink: the builder reports it if it matters
            h.update(
                f"f\0{rel_dir}/{name}\0{fst.st_mode}\0{fst.st_size}\0{fst.st_mtime_ns}\0"
                f"{fst.st_ctime_ns}\0{fst.st_ino}\0".encode(errors="surrogateescape")
            )
    return h.hexdigest()


def build_image(
    src: Path,
    out: Path,
    deps: DependencyOptions | None = None,
    progress: Progress | None = None,
    cancel: threading.Event | None = None,
) -> ImageInfo:
    """The one way a tree becomes an image: its requirements installed, then packed.

    ``out`` is a file or a directory (then ``<digest>.hlimg`` inside it).
    Without ``deps`` a ``requirements.txt`` is refused rather than ignored.
    Raises ``CacheError`` (a :class:`~huselet.code.dependencies.DependencyError`
    for pip's failures) or ``OSError``.
    """
    started = time.monotonic()
    return pack_with_deps(src, out, install_deps(src, deps, progress, cancel), progress, started)


def install_deps(
    src: Path,
    deps: DependencyOptions | None,
    progress: Progress | None = None,
    cancel: threading.Event | None = None,
) -> Path | None:
    """First half of :func:`build_image`: the installed requirements tree, or None."""
    if deps is not None:
        return install_requirements(src, deps, progress, cancel)
    if (src / "requirements.txt").is_file():
        from huselet.code.dependencies import DependencyError

        raise DependencyError("the tree has a requirements.txt but no dependency cache is set")
    return None


def pack_with_deps(
    src: Path, out: Path, tree: Path | None, progress: Progress | None, started: float
) -> ImageInfo:
    """Second half of :func:`build_image`: the tree and its requirements, packed."""
    info = pack_directory(src, out, extra_trees={DEPS_DIR: tree} if tree is not None else {})
    if progress is not None:
        progress(
            {
                "phase": "packed",
                "elapsed_s": round(time.monotonic() - started, 1),
                "files": info.files,
                "bytes": info.size,
                "digest": info.digest,
                "done": True,
            }
        )
    return info


@dataclass(frozen=True, slots=True)
class PackPlan:
    """A tree that must be packed: its fingerprint, taken before anything is read."""

    key: str
    fingerprint: str
    started: float


class DirectoryPacker:
    """Packs trees into ``out_dir``; remembers fingerprints in ``out_dir/index.json``."""

    def __init__(
        self,
        out_dir: Path,
        deps: DependencyOptions | None = None,
        progress: Progress | None = None,
    ) -> None:
        self.out_dir = out_dir
        # Default: the cache directory next to packed/ (the daemon's layout).
        self.deps = deps or DependencyOptions(cache_dir=out_dir.parent)
        self.progress = progress
        self._index_path = out_dir / INDEX_NAME
        self._entries: dict[str, dict[str, Any]] | None = None  # loaded lazily (in a thread)
        # plan() and build() may run at once on different threads (several pips wait
        # on the network while an image is built): the index is read and written under it.
        self._index_lock = threading.Lock()

    def pack(self, src: Path, cancel: threading.Event | None = None) -> PackResult:
        """Pack ``src`` unless its fingerprint matches the last pack (all three steps).

        Raises ``CacheError`` (from the builder) or ``OSError``; ``cancel`` stops pip.
        """
        plan = self.plan(src)
        if isinstance(plan, PackResult):
            return plan
        return self.build(src, plan, self.install(src, cancel))

    # The three steps, for a caller that runs them apart: the daemon lets several
    # pips run at once (they wait on the network) but builds one image at a time.

    def plan(self, src: Path) -> PackResult | PackPlan:
        """The earlier image if the tree is unchanged, else what :meth:`build` needs."""
        started = time.monotonic()
        key = str(src.resolve())
        # Taken before packing: an edit while packing leaves a stale fingerprint,
        # which only costs a repack next time, never a stale image.
        fingerprint = tree_fingerprint(src)
        with self._index_lock:
            entries = self._load()
            entry = entries.get(key)
            if entry is not None and entry.get("fingerprint") == fingerprint:
                path = self.out_dir / fmt.image_file_name(entry["digest"])
                try:
                    size = path.stat().st_size
                except FileNotFoundError:
                    pass
                else:
                    entry["used"] = time.time()
                    self._save(entries)
                    return PackResult(entry["digest"], size, path, reused=True)
        return PackPlan(key, fingerprint, started)

    def needs_pip(self, src: Path) -> bool:
        """Whether :meth:`install` would run pip (requirements not installed yet)."""
        key = requirements_key(src, self.deps)
        return key is not None and not (self.deps.cache_dir / "deps" / key).is_dir()

    def install(self, src: Path, cancel: threading.Event | None = None) -> Path | None:
        """The tree's installed requirements (pip if not cached), or None without any."""
        return install_deps(src, self.deps, self.progress, cancel)

    def build(self, src: Path, plan: PackPlan, tree: Path | None) -> PackResult:
        """Pack ``src`` (with ``tree`` as its requirements) and remember its fingerprint."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        info = pack_with_deps(src, self.out_dir, tree, self.progress, plan.started)
        with self._index_lock:
            entries = self._load()
            entry = entries.get(plan.key)
            old = entry.get("digest") if entry else None
            entries[plan.key] = {
                "fingerprint": plan.fingerprint,
                "digest": info.digest,
                "used": time.time(),
            }
            self._trim(entries)
            self._save(entries)
            if old and old != info.digest:
                self._delete_unreferenced(entries, old)
        if info.skipped:
            log.warning("special files left out of the image", source=plan.key, files=info.skipped)
        return PackResult(info.digest, info.size, info.path, reused=False)

    def _load(self) -> dict[str, dict[str, Any]]:
        if self._entries is not None:
            return self._entries
        entries: dict[str, dict[str, Any]] = {}
        try:
            raw = json.loads(self._index_path.read_text())
            if isinstance(raw, dict) and raw.get("version") == 1:
                for key, value in dict(raw.get("entries", {})).items():
                    if (
                        isinstance(value, dict)
                        and fmt.is_digest_hex(str(value.get("digest", "")))
                        and isinstance(value.get("fingerprint"), str)
                    ):
                        entries[key] = value
        except FileNotFoundError:
            pass
        except (OSError, ValueError) as exc:
            # Only a cache of fingerprints: losing it costs one repack per tree.
            log.warning(
                "ignoring unreadable pack index", path=str(self._index_path), error=str(exc)
            )
        self._entries = entries
        return entries

    def _trim(self, entries: dict[str, dict[str, Any]]) -> None:
        while len(entries) > MAX_INDEX_ENTRIES:
            oldest = min(entries, key=lambda k: float(entries[k].get("used", 0)))
            digest = entries.pop(oldest)["digest"]
            self._delete_unreferenced(entries, digest)

    def _delete_unreferenced(self, entries: dict[str, dict[str, Any]], digest: str) -> None:
        if any(e["digest"] == digest for e in entries.values()):
            return  # another tree packs to the same bytes
        (self.out_dir / fmt.image_file_name(digest)).unlink(missing_ok=True)

    def _save(self, entries: dict[str, dict[str, Any]]) -> None:
        tmp = self._index_path.with_name(f"{INDEX_NAME}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"version": 1, "entries": entries}, sort_keys=True))
        os.replace(tmp, self._index_path)
