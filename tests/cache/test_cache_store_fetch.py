"""ImageStore fetching: singleflight, retries, cool-down, typed failures per origin."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest
import trio
import trio.testing
from cache_testkit import OriginServer, publish
from storekit import (
    CountingOrigin,
    DiskFullOrigin,
    published_store,
    same_size_images,
    start_store,
)

from cache import errors
from cache.builder import ImageInfo
from cache.origin import DirectoryOrigin, HttpOrigin


async def test_hundred_concurrent_gets_cause_one_http_fetch(
    tmp_path: Path, nursery: trio.Nursery, served: Path, sample_image: ImageInfo
) -> None:
    store = await published_store(nursery, tmp_path, served, sample_image)
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
    store = await published_store(nursery, tmp_path, served, sample_image)
    origin = CountingOrigin(DirectoryOrigin(served), gated=True)
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
    store = await published_store(nursery, tmp_path, served, sample_image)
    origin = CountingOrigin(DirectoryOrigin(served), gated=True)
    with pytest.raises(errors.TransientFetchError, match=r"not available within 0\.05s"):
        await store.get(sample_image.digest, origin, timeout=0.05)
    origin.gate.set()
    with trio.fail_after(30):
        lease = await store.get(sample_image.digest, origin)
    lease.release()
    assert origin.calls == 1


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
    store = await published_store(nursery, tmp_path, served, sample_image)
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
