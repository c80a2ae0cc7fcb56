"""Image files named by path: read as an origin, and their declared digest."""

from __future__ import annotations

from pathlib import Path

import trio

from cache.errors import FetchError, ImageNotFound
from cache.origin import ImageSink, Origin
from cache.safeio import open_regular
from cache.validate import inspect_image

COPY_CHUNK = 1 << 20


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
                while chunk := source.read(COPY_CHUNK):
                    trio.from_thread.check_cancelled()
                    sink.write(chunk)
                return sink.finish()
            except BaseException:
                sink.abort()
                raise


def image_digest(path: Path) -> str:
    """The digest an image file declares (header and index checked; the store hashes it).

    Read with ``pread``, never mapped: the file is the operator's, not ours.
    """
    return inspect_image(path, verify=False).digest
