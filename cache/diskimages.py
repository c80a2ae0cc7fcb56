"""The image store's disk level, file by file: installed images and their directories.

:class:`DiskImage` is one installed image and who uses it; :class:`ImageFiles`
owns ``images/`` and ``quarantine/`` (the start-up scan, moving a corrupt image
aside); the functions below open, verify and commit image files. Everything
here blocks on the file system: :class:`~cache.store.ImageStore` runs it in
worker threads (quarantining a single file is one rename and may run inline).
"""

from __future__ import annotations

import logging
import os
import secrets
from pathlib import Path

from cache import format as fmt
from cache.durable import fsync_dir
from cache.errors import CacheError, DigestMismatch
from cache.reader import ImageReader
from cache.validate import inspect_image

log = logging.getLogger("huselet.cache")

# (digest, path, size, inode) of one image found on disk at start.
Found = tuple[str, Path, int, int]


class DiskImage:
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


class ImageFiles:
    """``images/`` and ``quarantine/`` under the store's state directory."""

    def __init__(self, state_dir: Path, quarantine_keep: int) -> None:
        self.images_dir = state_dir / "images"
        self.quarantine_dir = state_dir / "quarantine"
        self.quarantine_keep = quarantine_keep

    def scan(self) -> tuple[list[Found], int, int]:
        """Installed images oldest first (LRU order), partials removed, broken quarantined."""
        self.images_dir.mkdir(parents=True, exist_ok=True)
        self.quarantine_dir.mkdir(parents=True, exist_ok=True)
        entries = sorted(self.images_dir.iterdir(), key=_mtime)  # oldest first = LRU order
        found: list[Found] = []
        partials = broken = 0
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
                self.quarantine(path, str(exc))
                broken += 1
        return found, partials, broken

    def quarantine(self, path: Path, reason: str) -> None:
        """Move a corrupt image aside for inspection, keeping the newest ``quarantine_keep``."""
        log.error("quarantining image %s: %s", path.name, reason)
        target = self.quarantine_dir / f"{path.name}.{secrets.token_hex(3)}"
        try:
            os.rename(path, target)
        except FileNotFoundError:
            return
        kept = sorted(self.quarantine_dir.iterdir(), key=_mtime)
        for old in kept[: max(0, len(kept) - self.quarantine_keep)]:
            old.unlink(missing_ok=True)


def open_installed(path: Path, digest: str, identity: tuple[int, int]) -> ImageReader:
    return ImageReader.open(path, expected_digest=digest, verify=False, expected_identity=identity)


def verify_installed(path: Path, digest: str, identity: tuple[int, int]) -> None:
    # pread-hashed (never through a mapping): a truncation meanwhile is an error.
    reader = ImageReader.open(path, expected_digest=digest, verify=True, expected_identity=identity)
    reader.close()


def verify_download(part: Path, digest: str) -> int:
    index = inspect_image(part, verify=True, follow_symlinks=False)
    if index.digest != digest:
        raise DigestMismatch(
            f"image digest mismatch: expected {digest}, header says {index.digest}"
        )
    return index.size


def commit(part: Path, final: Path) -> int:
    """Rename the verified download into place, read-only; return its inode."""
    st = os.lstat(part)
    # Our private copy: nobody (not even we) writes to it again. Readable by
    # all, whatever the umask was when it was created (a process-wide umask
    # another thread narrowed would leave sandboxes unable to read their code);
    # the store's own directory is what keeps it private.
    os.chmod(part, 0o444)
    os.rename(part, final)
    fsync_dir(final.parent)
    return st.st_ino


def unlink_quietly(path: Path) -> None:
    path.unlink(missing_ok=True)


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return 0.0
