"""PackageManager: functions resolved to leased images — packed directories, image
files, digests from a real HTTP origin — with clear, caller-safe failures, the
scrub → quarantine → refetch loop, and real workers importing from the image."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
from cache_testkit import (
    APP_FILES,
    OriginServer,
    build_image,
    publish,
    variant,
    write_tree,
)
from support import NodeStack, closed_port

from cache.store import ImageStore
from huselet.admin.render import render_status
from huselet.admin.render_cache import render_cache
from huselet.code.codecache import CodeCache
from huselet.code.images import CodeUnavailable
from huselet.code.packages import PackageManager
from huselet.code.packing import DirectoryPacker, PackResult
from huselet.config import Config, parse_config
from huselet.metrics.instances import InstanceMetrics

MiB = 1 << 20


def make_config(root: Path, functions: list[dict[str, Any]], **cache: Any) -> Config:
    raw = {
        "node": {"state_dir": str(root / "state"), "run_dir": str(root / "run")},
        "cache": {"scrub_interval_s": 0, "fetch_attempts": 2, **cache},
        "functions": functions,
    }
    return parse_config(raw, base_dir=root)


@asynccontextmanager
async def running_cache(config: Config) -> AsyncIterator[CodeCache]:
    cache = CodeCache(config, prediction_tick_s=0.05, publish_settle_s=0.1)
    # Fast, still jittered retries: tests must not wait out production backoffs.
    cache.store._fetcher._backoff_base = 0.05
    async with trio.open_nursery() as nursery:
        await nursery.start(cache.run)
        yield cache
        nursery.cancel_scope.cancel()


def fn_dir(root: Path, name: str = "dev") -> dict[str, Any]:
    write_tree(root / "pkgs" / name, APP_FILES)
    return {"name": name, "package": f"pkgs/{name}", "handler": "main:handler"}


class CountingPacker(DirectoryPacker):
    def __init__(self, out_dir: Path) -> None:
        super().__init__(out_dir)
        self.results: list[bool] = []  # reused flag per pack call

    def plan(self, src: Path) -> Any:
        result = super().plan(src)
        if isinstance(result, PackResult):
            self.results.append(result.reused)
        return result

    def build(self, src: Path, plan: Any, tree: Any) -> Any:
        result = super().build(src, plan, tree)
        self.results.append(result.reused)
        return result


# -- directories ---------------------------------------------------------------------------


async def test_directory_package_is_packed_once_and_leased_per_instance(short_tmp: Path) -> None:
    config = make_config(short_tmp, [fn_dir(short_tmp), {**fn_dir(short_tmp), "name": "dev2"}])
    cache = CodeCache(config)
    packer = cache.packages.packer = CountingPacker(cache.packages.packer.out_dir)
    async with trio.open_nursery() as nursery:
        await nursery.start(cache.run)
        manager = cache.packages
        leases = [await manager.acquire(fn) for fn in config.functions for _ in range(3)]
        assert packer.results == [False]  # one directory, one pack, however many starts
        digests = {lease.digest for lease in leases}  # type: ignore[union-attr]
        assert len(digests) == 1
        (image,) = cache.store.images()
        assert image.pins == 6 and image.mapped
        assert all(lease.image == image.path for lease in leases)
        row = manager.describe()["images"][0]
        assert row["level"] == "memory" and row["functions"] == ["dev", "dev2"]
        assert row["hits"] == {"origin": 1, "memory": 5}
        for lease in leases:
            lease.release()
        assert cache.store.images()[0].pins == 0
        nursery.cancel_scope.cancel()


def test_packer_reuses_an_unchanged_tree_and_repacks_an_edited_one(tmp_path: Path) -> None:
    src = write_tree(tmp_path / "src", APP_FILES)
    out = tmp_path / "packed"
    first = DirectoryPacker(out).pack(src)
    again = DirectoryPacker(out).pack(src)  # a new packer: as after a restart
    assert (first.reused, again.reused) == (False, True)
    assert again.digest == first.digest
    (src / "app" / "consts.py").write_text("SUFFIX = '?'\n")
    edited = DirectoryPacker(out).pack(src)
    assert not edited.reused and edited.digest != first.digest
    assert not first.path.exists() and edited.path.exists()  # the stale image is gone
    (out / "index.json").write_text("{not json")  # a damaged index only costs a repack
    assert DirectoryPacker(out).pack(src).digest == edited.digest


async def test_unpackable_directory_fails_its_starts_with_a_safe_reason(short_tmp: Path) -> None:
    spec = fn_dir(short_tmp)
    (short_tmp / "pkgs" / "dev" / "escape").symlink_to("/etc/passwd")
    config = make_config(short_tmp, [spec])
    async with running_cache(config) as cache:
        with pytest.raises(CodeUnavailable) as info:
            await cache.packages.acquire(config.functions[0])
        assert info.value.message == "its package directory could not be packed; see the node log"
        assert [e["kind"] for e in cache.packages.events] == ["pack_failed"]


async def test_pack_directories_false_serves_plain_directories(short_tmp: Path) -> None:
    config = make_config(short_tmp, [fn_dir(short_tmp)], pack_directories=False)
    async with running_cache(config) as cache:
        lease = await cache.packages.acquire(config.functions[0])
        assert lease.image is None
        assert cache.store.images() == []


# -- image files -----------------------------------------------------------------------------


async def test_image_file_is_installed_and_followed_when_rebuilt(short_tmp: Path) -> None:
    info = build_image(short_tmp, "a")
    target = short_tmp / "app.hlimg"
    target.write_bytes(info.path.read_bytes())
    config = make_config(
        short_tmp, [{"name": "img", "image": "app.hlimg", "handler": "main:handler"}]
    )
    async with running_cache(config) as cache:
        first = await cache.packages.acquire(config.functions[0])
        assert first.digest == info.digest  # type: ignore[union-attr]
        rebuilt = build_image(short_tmp, "b", variant("b"))
        tmp = short_tmp / "app.hlimg.tmp"
        tmp.write_bytes(rebuilt.path.read_bytes())
        tmp.rename(target)
        second = await cache.packages.acquire(config.functions[0])
        assert second.digest == rebuilt.digest  # type: ignore[union-attr]
        target.unlink()  # gone from disk: the installed copy still serves
        third = await cache.packages.acquire(config.functions[0])
        assert third.digest == rebuilt.digest  # type: ignore[union-attr]
        for lease in (first, second, third):
            lease.release()


# -- digests from an HTTP origin ----------------------------------------------------------------


def digest_fn(name: str, digest: str, origin: str) -> dict[str, Any]:
    return {"name": name, "digest": digest, "origin": origin, "handler": "main:handler"}


async def test_digest_from_http_origin_is_fetched_once_for_many_starts(
    short_tmp: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="huselet.packages")
    info = build_image(short_tmp, "a")
    publish(info.path, short_tmp / "served")
    with OriginServer(short_tmp / "served") as server:
        config = make_config(short_tmp, [digest_fn("remote", info.digest, server.url)])
        async with running_cache(config) as cache:
            leases: list[Any] = []

            async def start() -> None:
                leases.append(await cache.packages.acquire(config.functions[0]))

            with trio.fail_after(20):
                async with trio.open_nursery() as nursery:
                    for _ in range(20):
                        nursery.start_soon(start)
            assert server.requests == {f"{info.digest}.hlimg.zst": 1}
            assert {lease.digest for lease in leases} == {info.digest}
            stats = cache.packages.stats()
            assert stats["origin"]["fetches"] == 1 and stats["origin"]["coalesced"] == 19
            # One line for the fetch, saying how many starts waited for it.
            fetched = [r for r in caplog.records if r.getMessage() == "image fetched"]
            assert len(fetched) == 1
            assert fetched[0].__dict__["fields"]["starts"] == 20
            for lease in leases:
                lease.release()


async def test_unreachable_origin_fails_fast_with_a_reason_and_no_address(
    short_tmp: Path,
) -> None:
    digest = "ab" * 32
    url = f"http://127.0.0.1:{closed_port()}/images"
    config = make_config(short_tmp, [digest_fn("down", digest, url)])
    async with running_cache(config) as cache:
        with trio.fail_after(10), pytest.raises(CodeUnavailable) as info:  # hang guard only
            await cache.packages.acquire(config.functions[0])
        message = info.value.message
        assert (
            message
            == f"image {digest[:12]} could not be fetched: its origin is unreachable or failing"
        )
        # The cool-down answers further starts without another fetch attempt.
        attempts = cache.store.stats.fetches
        with trio.fail_after(30), pytest.raises(CodeUnavailable) as again:
            await cache.packages.acquire(config.functions[0])
        assert cache.store.stats.fetches == attempts
        assert "next attempt in" in again.value.message
        assert "127.0.0.1" not in again.value.message
        assert cache.packages.events[-1]["kind"] == "fetch_failed"
        assert "127.0.0.1" in cache.packages.events[-1]["detail"]  # the operator gets the detail


async def test_missing_and_corrupt_images_at_the_origin(short_tmp: Path) -> None:
    good = build_image(short_tmp, "a")
    other = build_image(short_tmp, "b", variant("b"))
    served = short_tmp / "served"
    served.mkdir()
    # The bytes of another image under this digest's name: a bad mirror.
    (served / f"{good.digest}.hlimg").write_bytes(other.path.read_bytes())
    with OriginServer(served) as server:
        missing = "cd" * 32
        config = make_config(
            short_tmp,
            [digest_fn("missing", missing, server.url), digest_fn("bad", good.digest, server.url)],
        )
        async with running_cache(config) as cache:
            with pytest.raises(CodeUnavailable) as info:
                await cache.packages.acquire(config.functions[0])
            assert info.value.message == f"image {missing[:12]} is not at its origin"
            with pytest.raises(CodeUnavailable) as info:
                await cache.packages.acquire(config.functions[1])
            assert info.value.message == f"image {good.digest[:12]} came corrupt from its origin"
            assert not cache.store.contains(good.digest)


async def test_full_disk_is_an_error_the_caller_and_operator_see(short_tmp: Path) -> None:
    info = build_image(short_tmp, "a")
    config = make_config(short_tmp, [digest_fn("f", info.digest, str(info.path.parent))])
    async with running_cache(config) as cache:

        class DiskFullOrigin:
            def describe(self) -> str:
                return "a disk that is full"

            async def fetch(self, digest: str, dest: Path, *, max_bytes: int) -> int:
                # The kernel's own ENOSPC, through the real write path.
                from cache.origin import DirectoryOrigin

                origin = DirectoryOrigin(info.path.parent)
                return await origin.fetch(digest, Path("/dev/full"), max_bytes=max_bytes)

        cache.packages._origins[str(info.path.parent)] = DiskFullOrigin()  # type: ignore[assignment]
        with pytest.raises(CodeUnavailable) as err:
            await cache.packages.acquire(config.functions[0])
        assert err.value.message.endswith("cannot be installed: the node's disk is full")
        assert "disk full" in cache.packages.events[-1]["detail"]


# -- integrity ---------------------------------------------------------------------------------


async def test_scrub_quarantines_a_corrupt_image_reports_it_and_refetches(
    short_tmp: Path,
) -> None:
    info = build_image(short_tmp, "a")
    publish(info.path, short_tmp / "served")
    with OriginServer(short_tmp / "served") as server:
        config = make_config(short_tmp, [digest_fn("remote", info.digest, server.url)])
        async with running_cache(config) as cache:
            lease = await cache.packages.acquire(config.functions[0])
            installed = lease.image
            assert installed is not None
            assert (await cache.scrubber.scrub_now())["bad"] == []
            data = bytearray(installed.read_bytes())
            data[-1] ^= 0xFF  # bit rot in the last page
            installed.write_bytes(data)
            report = await cache.scrubber.scrub_now()
            assert [b["digest"] for b in report["bad"]] == [info.digest]
            assert "digest" in report["bad"][0]["reason"]
            assert list((short_tmp / "state" / "cache" / "quarantine").iterdir())
            assert any(e["kind"] == "quarantined" for e in cache.packages.events)
            # Refetched from the origin without anyone asking.
            assert await cache.prefetcher.wait(info.digest, 10) is None
            assert cache.store.contains(info.digest) and server.fetches(info.digest) == 2
            assert (await cache.scrubber.scrub_now())["bad"] == []
            lease.release()


# -- real workers --------------------------------------------------------------------------------


@asynccontextmanager
async def stack_with_cache(root: Path, functions: list[dict[str, Any]]) -> AsyncIterator[Any]:
    stack = NodeStack(root, functions)
    cache = CodeCache(stack.config)
    stack.dispatcher.code = cache.packages
    async with trio.open_nursery() as nursery:
        await nursery.start(cache.run)
        for runtime in stack.runtimes.values():
            await nursery.start(runtime.run)
        await nursery.start(stack.links.run, [f["name"] for f in functions])
        await nursery.start(stack.dispatcher.run)
        try:
            yield stack, cache
        finally:
            with trio.move_on_after(10):
                await stack.dispatcher.stop_instances()
            nursery.cancel_scope.cancel()


async def test_workers_import_from_the_image_and_failures_become_502(short_tmp: Path) -> None:
    info = build_image(short_tmp, "a", variant("r"))
    publish(info.path, short_tmp / "served")
    with OriginServer(short_tmp / "served") as server:
        functions = [
            fn_dir(short_tmp),
            digest_fn("remote", info.digest, server.url),
            digest_fn("missing", "ef" * 32, server.url),
        ]
        async with stack_with_cache(short_tmp, functions) as (stack, cache):
            extract = short_tmp / "state" / "cache" / "extract"
            for name, reply in (("dev", "YO!"), ("remote", "YO!r")):
                result = await stack.dispatcher.invoke(name, b'{"word": "yo"}', "json")
                body = json.loads(result.body)
                assert body["reply"] == reply and body["note"] == "served from the image"
                # Imported from the mapped image: a virtual path rooted in the image's
                # extracted tree (it holds app/note.txt), where main.py is not a file.
                file = Path(body["file"])
                assert file.parent.parent == extract and file.name == "main.py"
                assert (file.parent / "app" / "note.txt").is_file() and not file.exists()
            stack.pool("missing").observer = metrics = InstanceMetrics()
            with trio.fail_after(60):
                with pytest.raises(Exception) as err:
                    await stack.dispatcher.invoke("missing", b"{}", "json")
            assert getattr(err.value, "status", None) == 502
            assert "its code is not available: image efefefefefef is not at its origin" in str(
                err.value
            )
            assert dict(metrics.functions["missing"].failures) == {"fetch": 1}
            # Instances hold their images: pinned on disk and mapped in memory.
            pinned = {i.digest for i in cache.store.images() if i.pins}
            assert info.digest in pinned and len(pinned) == 2


# -- visibility and the CLI ---------------------------------------------------------------------


async def test_cache_listing_and_status_render(short_tmp: Path) -> None:
    info = build_image(short_tmp, "a")
    config = make_config(
        short_tmp,
        [fn_dir(short_tmp), digest_fn("later", info.digest, str(short_tmp / "nowhere"))],
    )
    async with running_cache(config) as cache:
        lease = await cache.packages.acquire(config.functions[0])
        data = cache.describe()
        levels = {row["level"]: row for row in data["images"]}
        assert levels["memory"]["functions"] == ["dev"] and levels["memory"]["pins"] == 1
        text = render_cache(data)
        assert "memory" in text and "dev" in text and "disk" in text and "prefetch" in text
        status_text = render_status({"cache": cache.packages.stats()})
        assert "memory 0 hit 1 miss" in status_text
        lease.release()


def test_huselet_pack_is_deterministic_and_writes_the_transfer_copy(tmp_path: Path) -> None:
    src = write_tree(tmp_path / "src", APP_FILES)
    outs = []
    for name in ("one", "two"):
        out = tmp_path / name
        out.mkdir()
        proc = subprocess.run(
            [sys.executable, "-m", "huselet", "pack", str(src), "-o", str(out), "--zstd", "--json"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 0, proc.stderr
        outs.append(json.loads(proc.stdout))
    assert outs[0]["digest"] == outs[1]["digest"]
    assert Path(outs[0]["zstd"]).name == f"{outs[0]['digest']}.hlimg.zst"
    assert Path(outs[0]["path"]).read_bytes() == Path(outs[1]["path"]).read_bytes()
    bad = subprocess.run(
        [sys.executable, "-m", "huselet", "pack", str(tmp_path / "nope"), "-o", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 2 and "is not a directory" in bad.stderr


def test_an_empty_store_lists_nothing(short_tmp: Path) -> None:
    store = ImageStore(short_tmp, disk_budget_bytes=MiB, memory_budget_bytes=MiB)
    assert store.level_of("00" * 32) is None and store.images() == []
    manager = PackageManager(make_config(short_tmp, []), store)
    assert manager.describe()["images"] == []


async def test_unexpected_errors_become_code_unavailable(
    short_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = make_config(short_tmp, [fn_dir(short_tmp)])
    async with running_cache(config) as cache:

        async def too_many_files(*args: Any, **kw: Any) -> Any:
            raise OSError(24, "Too many open files")

        monkeypatch.setattr(cache.store, "get", too_many_files)
        with pytest.raises(CodeUnavailable) as info:
            await cache.packages.acquire(config.functions[0])
        assert info.value.message.endswith("could not be opened; see the node log")


async def test_native_trees_are_extracted_before_starts_and_leave_with_their_image(
    short_tmp: Path,
) -> None:
    """APP_FILES holds a data file, so each image gets an extract/<digest>/ tree."""
    first, second = build_image(short_tmp, "a"), build_image(short_tmp, "b", variant("b"))
    target = short_tmp / "app.hlimg"
    target.write_bytes(first.path.read_bytes())
    config = make_config(
        short_tmp, [{"name": "img", "image": "app.hlimg", "handler": "main:handler"}]
    )
    extract = short_tmp / "state" / "cache" / "extract"
    async with running_cache(config) as cache:
        lease = await cache.packages.acquire(config.functions[0])
        assert lease.image is not None and lease.image.native_dirs == (  # type: ignore[attr-defined]
            str(extract / first.digest),
        )
        assert (extract / first.digest / "app" / "note.txt").is_file()
        lease.release()
        cache.store.evict_unused()  # the first image leaves the store...
        stale = extract / ".dead.1.tmp"
        stale.mkdir()
        os.utime(stale, (1, 1))  # ...and an extraction that died long ago left this
        (target.with_suffix(".tmp")).write_bytes(second.path.read_bytes())
        target.with_suffix(".tmp").rename(target)
        lease = await cache.packages.acquire(config.functions[0])  # a new tree: a sweep
        assert sorted(p.name for p in extract.iterdir()) == [second.digest]
        lease.release()
