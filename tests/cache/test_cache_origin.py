"""Origins: directory and HTTP fetches, zstd or raw, with limits and typed failures."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
import zstandard
from cache_testkit import OriginServer, publish

from cache.builder import ImageInfo
from cache.errors import FetchError, ImageNotFound, ImageTooLarge, TransientFetchError
from cache.origin import DirectoryOrigin, HttpOrigin, origin_from_url

LIMIT = 1 << 24


@pytest.fixture
def served(tmp_path: Path) -> Path:
    return tmp_path / "published"


@pytest.fixture
def server(served: Path) -> Iterator[OriginServer]:
    served.mkdir(exist_ok=True)
    with OriginServer(served) as running:
        yield running


@pytest.mark.parametrize("compressed", [True, False])
async def test_directory_origin_delivers_the_image(
    tmp_path: Path, served: Path, sample_image: ImageInfo, compressed: bool
) -> None:
    publish(sample_image.path, served, compressed=compressed)
    dest = tmp_path / "out.part"
    size = await DirectoryOrigin(served).fetch(sample_image.digest, dest, max_bytes=LIMIT)
    assert size == sample_image.size
    assert dest.read_bytes() == sample_image.path.read_bytes()


async def test_directory_origin_missing_image(tmp_path: Path, served: Path) -> None:
    served.mkdir()
    with pytest.raises(ImageNotFound, match=f"image {'a' * 64} is not in {served}"):
        await DirectoryOrigin(served).fetch("a" * 64, tmp_path / "x", max_bytes=LIMIT)


async def test_garbage_is_neither_zstd_nor_an_image(tmp_path: Path, served: Path) -> None:
    served.mkdir()
    (served / f"{'b' * 64}.hlimg").write_bytes(b"<html>oops</html>")
    with pytest.raises(FetchError, match="is neither a zstd frame nor an image"):
        await DirectoryOrigin(served).fetch("b" * 64, tmp_path / "x", max_bytes=LIMIT)


async def test_a_zstd_bomb_stops_at_the_limit(tmp_path: Path, served: Path) -> None:
    served.mkdir()
    bomb = zstandard.ZstdCompressor().compress(b"\x89HLIMG\r\n" + bytes(64 << 20))
    (served / f"{'c' * 64}.hlimg.zst").write_bytes(bomb)
    assert len(bomb) < 1 << 16
    with pytest.raises(ImageTooLarge, match="is larger than 1048576 bytes"):
        await DirectoryOrigin(served).fetch("c" * 64, tmp_path / "x", max_bytes=1 << 20)


async def test_raw_image_over_the_limit(
    tmp_path: Path, served: Path, sample_image: ImageInfo
) -> None:
    publish(sample_image.path, served, compressed=False)
    with pytest.raises(ImageTooLarge):
        await DirectoryOrigin(served).fetch(sample_image.digest, tmp_path / "x", max_bytes=8192)


def test_origin_from_url(tmp_path: Path) -> None:
    assert isinstance(origin_from_url(str(tmp_path)), DirectoryOrigin)
    file_origin = origin_from_url(f"file://{tmp_path}/a%20b")
    assert isinstance(file_origin, DirectoryOrigin)
    assert file_origin.directory == tmp_path / "a b"
    http = origin_from_url("https://images.example:8443/fn/")
    assert isinstance(http, HttpOrigin) and http.describe() == "https://images.example:8443/fn"
    with pytest.raises(ValueError, match="unsupported origin URL scheme 'ftp'"):
        origin_from_url("ftp://x/y")


@pytest.mark.parametrize("behaviour", [None, "chunked"])
async def test_http_origin_prefers_the_compressed_copy(
    tmp_path: Path,
    served: Path,
    server: OriginServer,
    sample_image: ImageInfo,
    behaviour: str | None,
) -> None:
    copy = publish(sample_image.path, served)
    if behaviour:
        server.behaviour[copy.name] = behaviour
    dest = tmp_path / "out.part"
    with trio.fail_after(30):
        size = await HttpOrigin(server.url).fetch(sample_image.digest, dest, max_bytes=LIMIT)
    assert size == sample_image.size
    assert dest.read_bytes() == sample_image.path.read_bytes()
    assert dict(server.requests) == {copy.name: 1}


async def test_http_origin_falls_back_to_the_raw_image(
    tmp_path: Path, served: Path, server: OriginServer, sample_image: ImageInfo
) -> None:
    publish(sample_image.path, served, compressed=False)
    dest = tmp_path / "out.part"
    with trio.fail_after(30):
        await HttpOrigin(server.url).fetch(sample_image.digest, dest, max_bytes=LIMIT)
    assert dest.read_bytes() == sample_image.path.read_bytes()
    name = sample_image.path.name
    assert dict(server.requests) == {f"{name}.zst": 1, name: 1}


async def test_http_not_found_and_server_errors(
    tmp_path: Path, server: OriginServer, sample_image: ImageInfo
) -> None:
    origin = HttpOrigin(server.url)
    with trio.fail_after(30):
        with pytest.raises(ImageNotFound, match=f"image {sample_image.digest} is not at"):
            await origin.fetch(sample_image.digest, tmp_path / "x", max_bytes=LIMIT)
        server.behaviour[f"{sample_image.path.name}.zst"] = 503
        with pytest.raises(TransientFetchError, match=r"HTTP 503$"):
            await origin.fetch(sample_image.digest, tmp_path / "x", max_bytes=LIMIT)
        server.behaviour[f"{sample_image.path.name}.zst"] = 403
        with pytest.raises(FetchError, match=r"HTTP 403$") as caught:
            await origin.fetch(sample_image.digest, tmp_path / "x", max_bytes=LIMIT)
        assert not isinstance(caught.value, TransientFetchError)


async def test_http_declared_length_over_the_limit(
    tmp_path: Path, served: Path, server: OriginServer, sample_image: ImageInfo
) -> None:
    publish(sample_image.path, served, compressed=False)
    origin = HttpOrigin(server.url)
    with trio.fail_after(30), pytest.raises(ImageTooLarge):
        await origin.fetch(sample_image.digest, tmp_path / "x", max_bytes=4096)


async def test_http_connection_refused_is_transient(tmp_path: Path) -> None:
    with socket.socket() as probe:  # a port that was free a moment ago: nobody listens
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    origin = HttpOrigin(f"http://127.0.0.1:{port}/x", connect_timeout=5)
    with trio.fail_after(30), pytest.raises(TransientFetchError, match="cannot connect"):
        await origin.fetch("d" * 64, tmp_path / "x", max_bytes=LIMIT)


async def test_http_silent_server_hits_the_read_deadline(
    tmp_path: Path, server: OriginServer
) -> None:
    server.behaviour[f"{'e' * 64}.hlimg.zst"] = "stall"
    origin = HttpOrigin(server.url, read_timeout=0.2)
    with trio.fail_after(30), pytest.raises(TransientFetchError, match=r"no data for 0\.2s"):
        await origin.fetch("e" * 64, tmp_path / "x", max_bytes=LIMIT)
