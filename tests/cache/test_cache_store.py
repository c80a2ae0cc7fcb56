"""ImageStore: install and map, umask, LRU with pins, memory budget, limits."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import trio
import trio.testing
from cache_testkit import publish
from storekit import MiB, published_store, same_size_images, start_store

from cache import errors
from cache.builder import ImageInfo
from cache.origin import DirectoryOrigin
from cache.store import ImageStore


async def test_get_installs_maps_and_counts(
    tmp_path: Path, nursery: trio.Nursery, served: Path, sample_image: ImageInfo
) -> None:
    store = await published_store(nursery, tmp_path, served, sample_image)
    with trio.fail_after(30):
        with await store.get(sample_image.digest, DirectoryOrigin(served)) as lease:
            assert lease.path == tmp_path / "state/images" / sample_image.path.name
            assert bytes(lease.reader.read("pkg/data.txt")) == b"hello from the image\n"
        with await store.get(sample_image.digest, DirectoryOrigin(served)) as again:
            assert again.reader is lease.reader  # the memory level kept it mapped
    stats = store.stats
    assert (stats.disk_misses, stats.disk_hits) == (1, 1)
    assert (stats.memory_misses, stats.memory_hits) == (1, 1)
    assert (stats.fetches, stats.bytes_fetched) == (1, sample_image.size)
    assert (stats.disk_images, stats.disk_bytes) == (1, sample_image.size)
    assert sorted(p.name for p in (tmp_path / "state/images").iterdir()) == [sample_image.path.name]


async def test_installed_images_are_readable_whatever_the_umask(
    tmp_path: Path, nursery: trio.Nursery, served: Path, sample_image: ImageInfo
) -> None:
    # The umask is process-wide: another thread of the daemon may narrow it for
    # a moment (a socket bind) while a download is written. Sandboxes read images
    # as their own uid, so an installed image is 0444 regardless.
    store = await published_store(nursery, tmp_path, served, sample_image)
    old = os.umask(0o177)
    try:
        with trio.fail_after(30):
            with await store.get(sample_image.digest, DirectoryOrigin(served)) as lease:
                assert lease.path.stat().st_mode & 0o777 == 0o444
    finally:
        os.umask(old)


async def test_lru_eviction_skips_leased_images_and_reports_cache_full(
    tmp_path: Path, nursery: trio.Nursery, served: Path
) -> None:
    a, b, c, d = same_size_images(tmp_path, 4)
    for image in (a, b, c, d):
        publish(image.path, served)
    origin = DirectoryOrigin(served)
    store = await start_store(nursery, tmp_path / "state", disk_budget_bytes=2 * a.size)
    with trio.fail_after(30):
        held_a = await store.get(a.digest, origin)  # oldest, but leased
        (await store.get(b.digest, origin)).release()
        held_c = await store.get(c.digest, origin)  # must evict b, not a
        assert store.contains(a.digest) and not store.contains(b.digest)
        assert not (tmp_path / "state/images" / b.path.name).exists()
        assert store.stats.disk_evictions == 1
        with pytest.raises(
            errors.CacheFull, match=rf"no room for image {d.digest} \({d.size} bytes\)"
        ):
            await store.get(d.digest, origin)
        assert not list((tmp_path / "state/images").glob("*.part"))
        assert held_a.reader.is_file("data.bin")  # still usable
        held_a.release()
        held_c.release()


async def test_memory_budget_closes_only_unleased_mappings(
    tmp_path: Path, nursery: trio.Nursery, served: Path
) -> None:
    a, b, c = same_size_images(tmp_path, 3)
    for image in (a, b, c):
        publish(image.path, served)
    origin = DirectoryOrigin(served)
    store = await start_store(nursery, tmp_path / "state", memory_budget_bytes=a.size)
    with trio.fail_after(30):
        lease_a = await store.get(a.digest, origin)
        lease_b = await store.get(b.digest, origin)  # over budget, but both leased
        assert not lease_a.reader.closed and store.stats.mapped_images == 2
        lease_a.release()  # now a can go
        assert lease_a.reader.closed and store.stats.memory_evictions == 1
        lease_b.release()
        (await store.get(c.digest, origin)).release()
        assert lease_b.reader.closed and store.stats.mapped_images == 1


async def test_limits_and_bad_input(
    tmp_path: Path, nursery: trio.Nursery, served: Path, sample_image: ImageInfo
) -> None:
    store = await published_store(
        nursery, tmp_path, served, sample_image, disk_budget_bytes=sample_image.size - 1
    )
    with trio.fail_after(30):
        with pytest.raises(errors.ImageTooLarge, match="the disk budget is"):
            await store.get(sample_image.digest, DirectoryOrigin(served))
        with pytest.raises(ValueError, match="not a sha256 hex digest"):
            await store.get("ABC", DirectoryOrigin(served))


async def test_get_before_run_is_a_clear_error(tmp_path: Path, sample_image: ImageInfo) -> None:
    store = ImageStore(tmp_path, disk_budget_bytes=MiB, memory_budget_bytes=MiB)
    with pytest.raises(RuntimeError, match=r"ImageStore\.run\(\) is not running"):
        await store.get(sample_image.digest, DirectoryOrigin(tmp_path))
