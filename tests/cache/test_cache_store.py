"""ImageStore: install, singleflight, LRU with pins, budgets, quarantine, failures."""

from __future__ import annotations

import errno
import os
import random
import shutil
from pathlib import Path

import pytest
import trio
import trio.testing
from cache_testkit import OriginServer, make_tree, publish

from cache import errors
from cache.builder import ImageInfo, pack_directory
from cache.origin import DirectoryOrigin, HttpOrigin, Origin
from cache.store import ImageStore

MiB = 1 << 20


class CountingOrigin(Origin):
    """Wraps an origin: counts fetches, can hold them at a gate, can fail on cue."""

    def __init__(self, inner: Origin, failures: list[BaseException] | None = None) -> None:
        self.inner = inner
        self.calls = 0
        self.gate: trio.Event | None = None
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


@pytest.fixture
def served(tmp_path: Path) -> Path:
    path = tmp_path / "published"
    path.mkdir()
    return path


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


async def test_get_installs_maps_and_counts(
    tmp_path: Path, nursery: trio.Nursery, served: Path, sample_image: ImageInfo
) -> None:
    publish(sample_image.path, served)
    store = await start_store(nursery, tmp_path / "state")
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
    publish(sample_image.path, served)
    store = await start_store(nursery, tmp_path / "state")
    old = os.umask(0o177)
    try:
        with trio.fail_after(30):
            with await store.get(sample_image.digest, DirectoryOrigin(served)) as lease:
                assert lease.path.stat().st_mode & 0o777 == 0o444
    finally:
        os.umask(old)


async def test_hundred_concurrent_gets_cause_one_http_fetch(
    tmp_path: Path, nursery: trio.Nursery, served: Path, sample_image: ImageInfo
) -> None:
    publish(sample_image.path, served)
    store = await start_store(nursery, tmp_path / "state")
    digests = []
    with OriginServer(served) as server:
        origin = HttpOrigin(server.url)

        async def one() -> None:
            with await store.get(sample_image.digest, origin) as lease:
                digests.append(lease.reader.digest)

        with trio.fail_after(60):
            async with trio.open_nursery() as clients:
                for _ in range(100):
                    clients.start_soon(one)
    assert digests == [sample_image.digest] * 100
    assert dict(server.requests) == {f"{sample_image.path.name}.zst": 1}
    assert store.stats.fetches == 1
    assert store.stats.coalesced + 1 == store.stats.disk_misses == 100


async def test_concurrent_gets_wait_for_one_gated_fetch(
    tmp_path: Path, nursery: trio.Nursery, served: Path, sample_image: ImageInfo
) -> None:
    publish(sample_image.path, served)
    store = await start_store(nursery, tmp_path / "state")
    origin = CountingOrigin(DirectoryOrigin(served))
    origin.gate = trio.Event()
    leases = []

    async def one() -> None:
        leases.append(await store.get(sample_image.digest, origin))

    with trio.fail_after(30):
        async with trio.open_nursery() as clients:
            for _ in range(100):
                clients.start_soon(one)
            await trio.testing.wait_all_tasks_blocked()
            assert store.stats.coalesced == 99  # everyone is waiting on the one flight
            origin.gate.set()
    assert origin.calls == 1 and len(leases) == 100


async def test_a_waiter_giving_up_does_not_cancel_the_fetch(
    tmp_path: Path, nursery: trio.Nursery, served: Path, sample_image: ImageInfo
) -> None:
    publish(sample_image.path, served)
    store = await start_store(nursery, tmp_path / "state")
    origin = CountingOrigin(DirectoryOrigin(served))
    origin.gate = trio.Event()
    with pytest.raises(errors.TransientFetchError, match=r"not available within 0\.05s"):
        await store.get(sample_image.digest, origin, timeout=0.05)
    origin.gate.set()
    with trio.fail_after(30):
        lease = await store.get(sample_image.digest, origin)
    lease.release()
    assert origin.calls == 1


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


async def test_a_corrupt_transfer_is_retried_then_refused_then_cooled_down(
    tmp_path: Path, nursery: trio.Nursery, served: Path, sample_image: ImageInfo
) -> None:
    data = bytearray(sample_image.path.read_bytes())
    data[-1] ^= 0xFF  # last data page: the digest no longer matches
    (served / sample_image.path.name).write_bytes(data)
    origin = CountingOrigin(DirectoryOrigin(served))
    store = await start_store(
        nursery, tmp_path / "state", fetch_attempts=3, backoff_base=0.001, backoff_max=0.002
    )
    with trio.fail_after(30):
        with pytest.raises(errors.DigestMismatch, match=r"image digest mismatch.*gave up after 3"):
            await store.get(sample_image.digest, origin)
    assert origin.calls == 3
    assert not store.contains(sample_image.digest)
    assert list((tmp_path / "state/images").iterdir()) == []
    assert store.stats.fetch_failures == 1


async def test_failed_digest_is_not_refetched_during_its_cool_down(
    tmp_path: Path, nursery: trio.Nursery, served: Path
) -> None:
    origin = CountingOrigin(DirectoryOrigin(served))
    store = await start_store(nursery, tmp_path / "state", backoff_base=600, backoff_max=600)
    with trio.fail_after(30):
        with pytest.raises(errors.ImageNotFound):
            await store.get("f" * 64, origin)
        with pytest.raises(errors.ImageNotFound, match=r"not retrying for \d+\.\ds"):
            await store.get("f" * 64, origin)
    assert origin.calls == 1  # ImageNotFound is not retried, and the cool-down held


async def test_transient_failures_are_retried(
    tmp_path: Path, nursery: trio.Nursery, served: Path, sample_image: ImageInfo
) -> None:
    publish(sample_image.path, served)
    origin = CountingOrigin(
        DirectoryOrigin(served),
        failures=[errors.TransientFetchError("flaky"), errors.TransientFetchError("flaky again")],
    )
    store = await start_store(nursery, tmp_path / "state", fetch_attempts=3)
    with trio.fail_after(30):
        (await store.get(sample_image.digest, origin)).release()
    assert origin.calls == 3 and store.stats.fetches == 3


async def test_a_full_disk_is_a_typed_error_and_the_store_carries_on(
    tmp_path: Path, nursery: trio.Nursery, served: Path, sample_image: ImageInfo
) -> None:
    if not Path("/dev/full").exists():
        pytest.skip("/dev/full is not available to produce a real ENOSPC")
    publish(sample_image.path, served)
    store = await start_store(nursery, tmp_path / "state")
    with trio.fail_after(30):
        with pytest.raises(errors.DiskFull, match="disk full while installing image") as caught:
            await store.get(sample_image.digest, DiskFullOrigin(served))
        cause = caught.value.__cause__
        assert isinstance(cause, OSError) and cause.errno == errno.ENOSPC
        assert isinstance(caught.value, errors.CacheFull)
        other = same_size_images(tmp_path, 1)[0]
        publish(other.path, served)
        (await store.get(other.digest, DirectoryOrigin(served))).release()
    assert store.contains(other.digest)


async def test_an_origin_bug_fails_the_fetch_not_the_store(
    tmp_path: Path, nursery: trio.Nursery, served: Path, sample_image: ImageInfo
) -> None:
    origin = CountingOrigin(DirectoryOrigin(served), failures=[ZeroDivisionError("oops")])
    store = await start_store(nursery, tmp_path / "state")
    with trio.fail_after(30), pytest.raises(errors.FetchError, match="ZeroDivisionError"):
        await store.get(sample_image.digest, origin)
    assert store.stats.fetch_failures == 1


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
    publish(sample_image.path, served)
    origin = CountingOrigin(DirectoryOrigin(served))
    store = await start_store(nursery, tmp_path / "state")
    with trio.fail_after(30):
        (await store.get(sample_image.digest, origin)).release()
        assert await store.scrub() == []
        installed = tmp_path / "state/images" / sample_image.path.name
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


async def test_limits_and_bad_input(
    tmp_path: Path, nursery: trio.Nursery, served: Path, sample_image: ImageInfo
) -> None:
    publish(sample_image.path, served)
    store = await start_store(nursery, tmp_path / "state", disk_budget_bytes=sample_image.size - 1)
    with trio.fail_after(30):
        with pytest.raises(errors.ImageTooLarge, match="the disk budget is"):
            await store.get(sample_image.digest, DirectoryOrigin(served))
        with pytest.raises(ValueError, match="not a sha256 hex digest"):
            await store.get("ABC", DirectoryOrigin(served))


async def test_ensure_installs_without_mapping(
    tmp_path: Path, nursery: trio.Nursery, served: Path, sample_image: ImageInfo
) -> None:
    publish(sample_image.path, served)
    store = await start_store(nursery, tmp_path / "state")
    with trio.fail_after(30):
        path = await store.ensure(sample_image.digest, DirectoryOrigin(served))
    assert path.read_bytes() == sample_image.path.read_bytes()
    assert store.stats.mapped_images == 0


async def test_get_before_run_is_a_clear_error(tmp_path: Path, sample_image: ImageInfo) -> None:
    store = ImageStore(tmp_path, disk_budget_bytes=MiB, memory_budget_bytes=MiB)
    with pytest.raises(RuntimeError, match=r"ImageStore\.run\(\) is not running"):
        await store.get(sample_image.digest, DirectoryOrigin(tmp_path))


async def test_a_broken_installed_file_found_at_mapping_time_is_replaced(
    tmp_path: Path, nursery: trio.Nursery, served: Path, sample_image: ImageInfo
) -> None:
    publish(sample_image.path, served)
    origin = CountingOrigin(DirectoryOrigin(served))
    # A zero memory budget unmaps every image as soon as its lease ends.
    store = await start_store(nursery, tmp_path / "state", memory_budget_bytes=0)
    installed = tmp_path / "state/images" / sample_image.path.name
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
    publish(sample_image.path, served)
    store = await start_store(nursery, tmp_path / "state")
    installed = tmp_path / "state/images" / sample_image.path.name
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
    publish(sample_image.path, served)
    origin = CountingOrigin(DirectoryOrigin(served))
    store = await start_store(nursery, tmp_path / "state", memory_budget_bytes=0)
    installed = tmp_path / "state/images" / sample_image.path.name
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


async def test_install_and_scrub_hash_without_mapping(
    tmp_path: Path, nursery: trio.Nursery, served: Path, sample_image: ImageInfo
) -> None:
    """Verification reads with pread: a file shorter than its header says is an error."""
    from cache.validate import hash_image, inspect_image

    publish(sample_image.path, served)
    store = await start_store(nursery, tmp_path / "state")
    with trio.fail_after(30):
        path = await store.ensure(sample_image.digest, DirectoryOrigin(served))
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


async def test_one_origins_failure_does_not_block_another_origin(
    tmp_path: Path, nursery: trio.Nursery, served: Path, sample_image: ImageInfo
) -> None:
    # The function's origin lacks the image (and cools down); a copy published
    # elsewhere must still install at once — also for a fetch that joined the
    # failing flight while it was under way.
    publish(sample_image.path, served)
    empty = tmp_path / "empty"
    empty.mkdir()
    store = await start_store(nursery, tmp_path / "state")
    missing = CountingOrigin(DirectoryOrigin(empty))
    missing.gate = trio.Event()
    has_it = DirectoryOrigin(served)
    outcomes: list[str] = []

    async def from_missing() -> None:
        with pytest.raises(errors.ImageNotFound):
            await store.ensure(sample_image.digest, missing)
        outcomes.append("missing failed")

    async def from_has_it() -> None:
        await store.ensure(sample_image.digest, has_it)  # joins the flight from `missing`
        outcomes.append("installed")

    with trio.fail_after(30):
        async with trio.open_nursery() as both:
            both.start_soon(from_missing)
            await trio.testing.wait_all_tasks_blocked()
            both.start_soon(from_has_it)
            await trio.testing.wait_all_tasks_blocked()
            missing.gate.set()
    assert sorted(outcomes) == ["installed", "missing failed"]
    assert store.contains(sample_image.digest)
    # And with the failure cooling down: the other origin is not refused by it.
    other = await start_store(nursery, tmp_path / "state2")
    with pytest.raises(errors.ImageNotFound):
        await other.ensure(sample_image.digest, DirectoryOrigin(empty))
    with trio.fail_after(30):
        await other.ensure(sample_image.digest, has_it)
    assert other.contains(sample_image.digest)
