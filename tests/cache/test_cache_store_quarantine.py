"""ImageStore integrity: start-up cleanup, scrub, quarantine (bounded, while leased),
and damage found at mapping time."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import trio
import trio.testing
from storekit import (
    CountingOrigin,
    flip_in_place,
    installed_path,
    published_store,
    same_size_images,
    start_store,
    unmapping_store,
)

from cache import errors
from cache.builder import ImageInfo
from cache.origin import DirectoryOrigin


async def test_start_cleans_partials_and_quarantines_broken_images(
    tmp_path: Path, nursery: trio.Nursery, sample_image: ImageInfo
) -> None:
    good, bad = same_size_images(tmp_path, 2)
    images = tmp_path / "state/images"
    images.mkdir(parents=True)
    (images / good.path.name).write_bytes(good.path.read_bytes())
    broken = bytearray(bad.path.read_bytes())
    broken[0] = 0
    (images / bad.path.name).write_bytes(broken)
    (images / f"{good.digest}.1234.part").write_bytes(b"half a download")
    store = await start_store(nursery, tmp_path / "state")
    assert store.stats.partials_removed == 1 and store.stats.quarantined == 1
    assert [p.name for p in images.iterdir()] == [good.path.name]
    assert [
        p.name.startswith(bad.path.name) for p in (tmp_path / "state/quarantine").iterdir()
    ] == [True]
    with trio.fail_after(30):
        (await store.get(good.digest)).release()  # no origin needed: it is on disk
        with pytest.raises(errors.ImageNotFound, match="not in the store and has no origin"):
            await store.get(bad.digest)


async def test_scrub_quarantines_bit_rot_and_a_later_get_refetches(
    tmp_path: Path, nursery: trio.Nursery, served: Path, sample_image: ImageInfo
) -> None:
    origin = CountingOrigin(DirectoryOrigin(served))
    store = await published_store(nursery, tmp_path, served, sample_image)
    with trio.fail_after(30):
        (await store.get(sample_image.digest, origin)).release()
        assert await store.scrub() == []
        installed = installed_path(tmp_path, sample_image)
        flip_in_place(installed, -5)
        assert await store.scrub() == [sample_image.digest]
        assert not installed.exists() and not store.contains(sample_image.digest)
        (await store.get(sample_image.digest, origin)).release()
    assert origin.calls == 2
    assert installed.read_bytes() == sample_image.path.read_bytes()


async def test_quarantine_is_bounded(tmp_path: Path, nursery: trio.Nursery) -> None:
    images = same_size_images(tmp_path, 3)
    state = tmp_path / "state"
    (state / "images").mkdir(parents=True)
    for image in images:
        (state / "images" / image.path.name).write_bytes(b"junk")
    store = await start_store(nursery, state, quarantine_keep=2)
    assert store.stats.quarantined == 3
    assert len(list((state / "quarantine").iterdir())) == 2


async def test_a_broken_installed_file_found_at_mapping_time_is_replaced(
    tmp_path: Path, nursery: trio.Nursery, served: Path, sample_image: ImageInfo
) -> None:
    store, origin, installed = await unmapping_store(nursery, tmp_path, served, sample_image)
    with trio.fail_after(30):
        (await store.get(sample_image.digest, origin)).release()
        flip_in_place(installed, 0)
        with await store.get(sample_image.digest, origin) as lease:
            assert lease.reader.is_file("handler.py")
    assert origin.calls == 2 and store.stats.quarantined == 1
    assert installed.read_bytes() == sample_image.path.read_bytes()


async def test_quarantine_while_leased_keeps_the_lease_usable(
    tmp_path: Path, nursery: trio.Nursery, served: Path, sample_image: ImageInfo
) -> None:
    store = await published_store(nursery, tmp_path, served, sample_image)
    installed = installed_path(tmp_path, sample_image)
    with trio.fail_after(30):
        lease = await store.get(sample_image.digest, DirectoryOrigin(served))
        flip_in_place(installed, -3)
        assert await store.scrub() == [sample_image.digest]
    assert not lease.reader.closed and lease.reader.is_file("handler.py")
    lease.release()
    assert lease.reader.closed  # unmapped once the last user let go


async def test_a_store_file_replaced_behind_its_back_is_quarantined_not_mapped(
    tmp_path: Path, nursery: trio.Nursery, served: Path, sample_image: ImageInfo
) -> None:
    """A `cp` over an installed image: the store maps only the file it installed."""
    store, origin, installed = await unmapping_store(nursery, tmp_path, served, sample_image)
    with trio.fail_after(30):
        path = await store.ensure(sample_image.digest, origin)
        assert path == installed
        # Installed read-only: a private, immutable copy.
        assert installed.stat().st_mode & 0o222 == 0
        # Same bytes, other inode (what `cp --remove-destination` or an editor does):
        # not the file the store verified, so it is not trusted.
        replacement = installed.with_name("other")
        shutil.copyfile(sample_image.path, replacement)
        os.replace(replacement, installed)
        with await store.get(sample_image.digest, origin) as lease:
            assert lease.reader.is_file("handler.py")
    assert origin.calls == 2 and store.stats.quarantined == 1
    quarantined = list((tmp_path / "state/quarantine").iterdir())
    assert len(quarantined) == 1


async def test_ensure_installs_and_scrub_hashes_without_mapping(
    tmp_path: Path, nursery: trio.Nursery, served: Path, sample_image: ImageInfo
) -> None:
    """``ensure`` installs without mapping; verification reads with pread: a file
    shorter than its header says is an error."""
    from cache.validate import hash_image, inspect_image

    store = await published_store(nursery, tmp_path, served, sample_image)
    with trio.fail_after(30):
        path = await store.ensure(sample_image.digest, DirectoryOrigin(served))
    assert path.read_bytes() == sample_image.path.read_bytes()
    assert store.stats.mapped_images == 0
    fd = os.open(path, os.O_RDONLY)
    try:
        with pytest.raises(errors.CorruptImage, match="truncated or changed while being hashed"):
            hash_image(fd, sample_image.size + 4096)
    finally:
        os.close(fd)
    truncated = tmp_path / "truncated.hlimg"
    truncated.write_bytes(sample_image.path.read_bytes()[: sample_image.size // 2])
    with pytest.raises(errors.CorruptImage, match="truncated"):
        inspect_image(truncated, verify=True)
