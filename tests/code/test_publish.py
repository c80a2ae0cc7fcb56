"""PublishWatcher with real watchdog (inotify) events: images and directories
dropped into the publish directory are verified, installed and announced;
partial writes wait until complete; bad drops are rejected without harm."""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio
from cache_testkit import APP_FILES, build_image, variant, write_tree
from cache_testkit import publish as publish_image

from cache.origin import DirectoryOrigin
from huselet.code.codecache import CodeCache
from huselet.code.publish import PublishWatcher, is_ignored
from huselet.config import parse_config

SETTLE_S = 0.1


@asynccontextmanager
async def watching(
    root: Path, settle_s: float = SETTLE_S, **cache_keys: Any
) -> AsyncIterator[tuple[CodeCache, PublishWatcher, list[Any]]]:
    raw = {
        "node": {"state_dir": str(root / "state"), "run_dir": str(root / "run")},
        "cache": {"publish_dir": str(root / "publish"), "scrub_interval_s": 0, **cache_keys},
    }
    cache = CodeCache(parse_config(raw, base_dir=root), publish_settle_s=settle_s)
    assert cache.publisher is not None
    announced: list[tuple[str, str]] = []
    cache.publisher.announce.append(lambda digest, name: announced.append((digest, name)))
    async with trio.open_nursery() as nursery:
        await nursery.start(cache.run)
        yield cache, cache.publisher, announced
        nursery.cancel_scope.cancel()


async def until(predicate: Any, timeout: float = 30.0) -> None:
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(0.02)


async def test_an_image_renamed_into_place_is_installed_and_announced(short_tmp: Path) -> None:
    info = build_image(short_tmp, "a")
    async with watching(short_tmp) as (cache, publisher, announced):
        assert publisher.observer_kind == "inotify"
        staging = short_tmp / "publish" / ".incoming.tmp"
        staging.write_bytes(info.path.read_bytes())
        staging.rename(short_tmp / "publish" / "release-1.hlimg")  # any name will do
        await until(lambda: announced)
        assert announced == [(info.digest, "release-1.hlimg")]
        assert cache.store.contains(info.digest)
        event = cache.packages.events[-1]
        assert (event["kind"], event["digest"]) == ("published", info.digest)
        row = next(r for r in cache.describe()["images"] if r["digest"] == info.digest)
        assert row["source"] == "published"


async def test_a_partial_write_waits_until_the_file_is_complete(short_tmp: Path) -> None:
    info = build_image(short_tmp, "a")
    data = info.path.read_bytes()
    # A settle time no pause of a loaded machine comes near: a partial file is
    # never judged settled, so nothing is rejected.
    settle_s = 2.0
    async with watching(short_tmp, settle_s) as (_cache, publisher, announced):
        target = short_tmp / "publish" / f"{info.digest}.hlimg"
        # Written in place, slowly: each pause is far shorter than the settle time.
        with open(target, "wb") as f:
            step = len(data) // 4
            for start in range(0, len(data), step):
                f.write(data[start : start + step])
                f.flush()
                await trio.sleep(SETTLE_S / 3)
        await until(lambda: announced)
        assert announced == [(info.digest, target.name)]
        assert publisher.counters["rejected"] == 0
        # Our own reads of the file are not news: nothing is installed twice
        # (a check of absence: only a wait can show it).
        await trio.sleep(settle_s * 2.5)
        assert len(announced) == 1


async def test_part_files_are_ignored_until_renamed(short_tmp: Path) -> None:
    info = build_image(short_tmp, "a")
    async with watching(short_tmp) as (cache, _publisher, announced):
        part = short_tmp / "publish" / "app.hlimg.part"
        part.write_bytes(info.path.read_bytes()[:5000])  # half a download
        await trio.sleep(SETTLE_S * 5)
        assert announced == [] and list(cache.packages.events) == []
        part.write_bytes(info.path.read_bytes())
        part.rename(short_tmp / "publish" / "app.hlimg")
        await until(lambda: announced)
        assert cache.store.contains(info.digest)


async def test_a_dropped_directory_is_packed_and_installed(short_tmp: Path) -> None:
    async with watching(short_tmp) as (cache, _publisher, announced):
        staging = write_tree(short_tmp / "publish" / ".fn-v2", variant("v2"))
        staging.rename(short_tmp / "publish" / "fn-v2")
        await until(lambda: announced)
        ((digest, name),) = announced
        assert name == "fn-v2" and cache.store.contains(digest)
        expected = build_image(short_tmp, "same", variant("v2"))
        assert digest == expected.digest  # the same bytes `huselet pack` makes


async def test_bad_drops_are_rejected_and_good_ones_still_installed(short_tmp: Path) -> None:
    good = build_image(short_tmp, "a")
    other = build_image(short_tmp, "b", variant("b"))
    async with watching(short_tmp) as (cache, publisher, announced):
        publish = short_tmp / "publish"
        corrupt = bytearray(good.path.read_bytes())
        corrupt[-1] ^= 0xFF
        (publish / "corrupt.hlimg").write_bytes(corrupt)
        # Another image's bytes under this digest's name.
        (publish / f"{good.digest}.hlimg").write_bytes(other.path.read_bytes())
        (publish / "notes.txt").write_text("not an image")
        await until(lambda: publisher.counters["rejected"] == 3)
        assert announced == [] and cache.store.images() == []
        reasons = {e["name"]: e["detail"] for e in cache.packages.events if e["kind"] == "rejected"}
        assert "digest" in reasons["corrupt.hlimg"]
        assert "mismatch" in reasons[f"{good.digest}.hlimg"]
        assert "not an image" in reasons["notes.txt"]
        (publish / "fixed.hlimg").write_bytes(good.path.read_bytes())
        await until(lambda: announced)
        assert announced == [(good.digest, "fixed.hlimg")]


async def test_drops_present_at_start_and_zstd_copies_are_installed(short_tmp: Path) -> None:
    first = build_image(short_tmp, "a")
    second = build_image(short_tmp, "b", variant("b"))
    publish = short_tmp / "publish"
    publish.mkdir()
    (publish / "waiting.hlimg").write_bytes(first.path.read_bytes())
    async with watching(short_tmp) as (cache, _publisher, announced):
        await until(lambda: announced)  # found by the initial scan, no event needed
        publish_image(second.path, short_tmp / "zst")
        os.rename(
            short_tmp / "zst" / f"{second.digest}.hlimg.zst", publish / f"{second.digest}.hlimg.zst"
        )
        await until(lambda: len(announced) == 2)
        assert {d for d, _ in announced} == {first.digest, second.digest}
        assert cache.store.contains(second.digest)


async def test_a_published_image_is_the_origin_after_quarantine(short_tmp: Path) -> None:
    info = build_image(short_tmp, "a")
    async with watching(short_tmp) as (cache, _publisher, announced):
        (short_tmp / "publish" / "app.hlimg").write_bytes(info.path.read_bytes())
        await until(lambda: announced)
        installed = cache.store.images()[0].path
        data = bytearray(installed.read_bytes())
        data[100] ^= 0x01
        installed.write_bytes(data)
        assert [b["digest"] for b in (await cache.scrubber.scrub_now())["bad"]] == [info.digest]
        assert await cache.prefetcher.wait(info.digest, 10) is None
        assert cache.store.contains(info.digest)


def big_image(root: Path, tag: str) -> Any:
    """An image of ~640 KB (incompressible text): two do not fit a 1 MB disk budget."""
    return build_image(root, tag, {**APP_FILES, "blob.txt": secrets.token_hex(300_000)})


async def test_a_store_full_of_images_in_use_is_retried_until_room_is_made(
    short_tmp: Path,
) -> None:
    held, dropped = big_image(short_tmp, "held"), big_image(short_tmp, "dropped")
    async with watching(short_tmp, disk_budget_mb=1) as (cache, publisher, announced):
        publisher.retry_base_s = SETTLE_S
        publisher.retries = 1000  # never spent here: the retries end when room is made
        # An instance runs the first image: pinned, so the store cannot evict it.
        lease = await cache.store.get(held.digest, DirectoryOrigin(held.path.parent))
        staging = short_tmp / "publish" / ".dropped.tmp"
        staging.write_bytes(dropped.path.read_bytes())
        staging.rename(short_tmp / "publish" / "dropped.hlimg")
        await until(lambda: publisher.counters["retried"] >= 2)
        assert announced == [] and publisher.counters["rejected"] == 0
        lease.release()  # the instance ended: its image may go
        await until(lambda: announced)
        assert announced == [(dropped.digest, "dropped.hlimg")]
        assert publisher.counters["rejected"] == 0 and cache.store.contains(dropped.digest)


async def test_a_transient_failure_is_rejected_once_its_retries_are_spent(
    short_tmp: Path,
) -> None:
    held, dropped = big_image(short_tmp, "held"), big_image(short_tmp, "dropped")
    async with watching(short_tmp, disk_budget_mb=1) as (cache, publisher, announced):
        publisher.retry_base_s, publisher.retries = SETTLE_S, 2
        lease = await cache.store.get(held.digest, DirectoryOrigin(held.path.parent))
        try:
            staging = short_tmp / "publish" / ".dropped.tmp"
            staging.write_bytes(dropped.path.read_bytes())
            staging.rename(short_tmp / "publish" / "dropped.hlimg")
            await until(lambda: publisher.counters["rejected"] == 1)
            assert publisher.counters["retried"] == 2 and announced == []
            event = cache.packages.events[-1]
            assert event["kind"] == "rejected" and "in use" in event["detail"], event
        finally:
            lease.release()


def test_temporary_names_are_ignored() -> None:
    for name in (".rsync-tmp", "x.hlimg.tmp", "x.hlimg.part", "x~", ""):
        assert is_ignored(name)
    assert not is_ignored("x.hlimg") and not is_ignored("dir")
    assert APP_FILES  # the shared tree the images are built from
