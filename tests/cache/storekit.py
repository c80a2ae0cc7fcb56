"""Helpers for the ImageStore tests (``test_cache_store*.py``): origins that count,
gate or fail on cue, a disk that is full, images of one size, in-place damage,
and a running store with fast backoff."""

from __future__ import annotations

import random
from pathlib import Path

import trio
from cache_testkit import make_tree, publish

from cache.builder import ImageInfo, pack_directory
from cache.origin import DirectoryOrigin, Origin
from cache.store import ImageStore

MiB = 1 << 20


class CountingOrigin(Origin):
    """Wraps an origin: counts fetches, can hold them at a gate, can fail on cue."""

    def __init__(
        self, inner: Origin, failures: list[BaseException] | None = None, *, gated: bool = False
    ) -> None:
        self.inner = inner
        self.calls = 0
        self.gate: trio.Event | None = trio.Event() if gated else None  # set() opens it
        self.failures = list(failures or [])

    def describe(self) -> str:
        return f"counting {self.inner.describe()}"

    async def fetch(self, digest: str, dest: Path, *, max_bytes: int) -> int:
        self.calls += 1
        if self.gate is not None:
            await self.gate.wait()
        if self.failures:
            raise self.failures.pop(0)
        return await self.inner.fetch(digest, dest, max_bytes=max_bytes)


class DiskFullOrigin(DirectoryOrigin):
    """Writes the download to /dev/full: the kernel's own ENOSPC, through the real sink."""

    async def fetch(self, digest: str, dest: Path, *, max_bytes: int) -> int:
        return await super().fetch(digest, Path("/dev/full"), max_bytes=max_bytes)


def same_size_images(tmp_path: Path, count: int) -> list[ImageInfo]:
    """``count`` distinct images of identical size (budgets in whole images)."""
    out = tmp_path / "built"
    out.mkdir(exist_ok=True)
    images = []
    for i in range(count):
        src = make_tree(tmp_path / f"src{i}", {"data.bin": bytes([i]) * 10_000, "m.py": "X = 1\n"})
        images.append(pack_directory(src, out))
    assert len({image.size for image in images}) == 1
    return images


def flip_in_place(path: Path, offset: int) -> None:
    """Damage one byte without truncating: the file may be mapped (truncation → SIGBUS)."""
    with open(path, "r+b") as f:
        f.seek(offset, 2 if offset < 0 else 0)
        byte = f.read(1)[0]
        f.seek(-1, 1)
        f.write(bytes([byte ^ 0x5A]))


async def start_store(nursery: trio.Nursery, state: Path, **options: object) -> ImageStore:
    settings: dict = {
        "disk_budget_bytes": 64 * MiB,
        "memory_budget_bytes": 64 * MiB,
        "backoff_base": 0.001,
        "backoff_max": 0.002,
        "rng": random.Random(7),
    }
    settings.update(options)
    store = ImageStore(state, **settings)
    started: ImageStore = await nursery.start(store.run)
    return started


async def published_store(
    nursery: trio.Nursery, tmp_path: Path, served: Path, image: ImageInfo, **options: object
) -> ImageStore:
    """``image`` published in ``served`` and a store running on ``tmp_path / "state"``."""
    publish(image.path, served)
    return await start_store(nursery, tmp_path / "state", **options)


def installed_path(tmp_path: Path, image: ImageInfo) -> Path:
    """Where the store of :func:`published_store` installs ``image``."""
    return tmp_path / "state" / "images" / image.path.name


async def unmapping_store(
    nursery: trio.Nursery, tmp_path: Path, served: Path, image: ImageInfo
) -> tuple[ImageStore, CountingOrigin, Path]:
    """A :func:`published_store` with no memory budget (every image is unmapped as soon
    as its lease ends), a counting origin for ``image`` and where it is installed."""
    store = await published_store(nursery, tmp_path, served, image, memory_budget_bytes=0)
    return store, CountingOrigin(DirectoryOrigin(served)), installed_path(tmp_path, image)
