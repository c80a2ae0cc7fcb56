"""Fetch an image by digest from where it was published: a directory or an HTTP(S) server.

An origin serves ``<digest>.hlimg.zst`` (the zstd transfer copy, tried
first) or ``<digest>.hlimg``. Whatever arrives is streamed into a file the
caller names: decompressed on the fly in bounded chunks, capped at
``max_bytes`` of *image* bytes (so a zstd bomb stops at the cap), fsynced.
The origin does not judge the bytes: :class:`cache.store.ImageStore`
verifies the digest before anything is installed.

Errors: :class:`ImageNotFound` (the origin answered "no"),
:class:`ImageTooLarge`, :class:`TransientFetchError` (worth a retry:
connection trouble, timeouts, 5xx) or :class:`FetchError`. Local write
failures surface as the ``OSError`` they are, so the store can tell a full
disk from a bad network.
"""

from __future__ import annotations

import os
import ssl
from abc import ABC, abstractmethod
from pathlib import Path
from typing import BinaryIO
from urllib.parse import quote, unquote, urlsplit

import h11
import trio
import zstandard

from cache import format as fmt
from cache.errors import FetchError, ImageNotFound, ImageTooLarge, TransientFetchError

_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_CHUNK = 1 << 17
# A compressed copy is never meaningfully larger than the image; this slack
# covers frame overhead for incompressible data.
_COMPRESSED_SLACK = 1 << 20
_USER_AGENT = "huselet-cache/1"


class Origin(ABC):
    """Somewhere images can be fetched from, by digest."""

    @abstractmethod
    async def fetch(self, digest: str, dest: Path, *, max_bytes: int) -> int:
        """Write the (uncompressed) image to the new file ``dest``; return its size."""

    @abstractmethod
    def describe(self) -> str:
        """Where this origin points, for messages."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.describe()})"


def origin_from_url(
    url: str, *, connect_timeout: float = 10.0, read_timeout: float = 30.0
) -> Origin:
    """An origin for a directory path, ``file://`` URL or ``http(s)://`` URL."""
    parts = urlsplit(url)
    if parts.scheme in ("http", "https"):
        return HttpOrigin(url, connect_timeout=connect_timeout, read_timeout=read_timeout)
    if parts.scheme == "file":
        return DirectoryOrigin(Path(unquote(parts.path)))
    if parts.scheme == "":
        return DirectoryOrigin(Path(url))
    raise ValueError(f"unsupported origin URL scheme {parts.scheme!r} in {url!r}")


def transfer_names(digest: str) -> tuple[str, str]:
    """File names an origin is asked for, in order: compressed copy, then raw image."""
    name = fmt.image_file_name(digest)
    return name + ".zst", name


# -- writing what arrives ----------------------------------------------------------


class _CappedImageFile:
    """The image file being written, refusing to grow past ``max_bytes``."""

    def __init__(self, dest: Path, max_bytes: int, source: str) -> None:
        self.file = open(dest, "wb")  # noqa: SIM115  (closed by ImageSink)
        self.written = 0
        self._max_bytes = max_bytes
        self._source = source

    def write(self, data: bytes) -> int:
        self.written += len(data)
        if self.written > self._max_bytes:
            raise ImageTooLarge(f"{self._source} is larger than {self._max_bytes} bytes")
        self.file.write(data)
        return len(data)


class ImageSink:
    """Receives a transfer copy chunk by chunk and writes the image file.

    Sniffs the first bytes: zstd frames are decompressed (in ``_CHUNK``-sized
    pieces, so memory stays bounded whatever the ratio), a raw image is
    copied, anything else is refused. Synchronous on purpose: callers run it
    in a worker thread so local disk I/O never blocks the event loop.
    """

    def __init__(self, dest: Path, max_bytes: int, source: str) -> None:
        self._source = source
        self._max_received = max_bytes + _COMPRESSED_SLACK
        self._image = _CappedImageFile(dest, max_bytes, source)
        self._received = 0
        self._head = b""
        self._decompressor: zstandard.ZstdDecompressionWriter | None = None
        self._raw = False

    def write(self, chunk: bytes) -> None:
        self._received += len(chunk)
        if self._received > self._max_received:
            raise ImageTooLarge(f"{self._source} sent more than {self._max_received} bytes")
        if not (self._raw or self._decompressor):
            self._head += chunk
            if len(self._head) < len(fmt.MAGIC):
                return
            chunk, self._head = self._head, b""
            if chunk.startswith(_ZSTD_MAGIC):
                # The writer only ever calls .write on its target.
                self._decompressor = zstandard.ZstdDecompressor().stream_writer(
                    self._image,  # type: ignore[arg-type]
                    write_size=_CHUNK,
                    closefd=False,
                )
            elif chunk.startswith(fmt.MAGIC):
                self._raw = True
            else:
                raise FetchError(f"{self._source} is neither a zstd frame nor an image")
        if self._decompressor is not None:
            try:
                self._decompressor.write(chunk)
            except zstandard.ZstdError as exc:
                raise FetchError(f"{self._source} is not valid zstd: {exc}") from None
        else:
            self._image.write(chunk)

    def finish(self) -> int:
        """Flush, fsync and close; return the image size."""
        if self._head or not (self._raw or self._decompressor):
            raise FetchError(f"{self._source} is too short to be an image")
        if self._decompressor is not None:
            # zstandard ships no annotations for flush(); it returns the bytes written.
            self._decompressor.flush()  # type: ignore[no-untyped-call]
        self._image.file.flush()
        os.fsync(self._image.file.fileno())
        self._image.file.close()
        return self._image.written

    def abort(self) -> None:
        self._image.file.close()


# -- directories -------------------------------------------------------------------


class DirectoryOrigin(Origin):
    """Images published as files in a directory (local disk, NFS, a ``file://`` URL)."""

    def __init__(self, directory: Path | str) -> None:
        self.directory = Path(directory)

    def describe(self) -> str:
        return str(self.directory)

    async def fetch(self, digest: str, dest: Path, *, max_bytes: int) -> int:
        # One thread call for the whole copy; check_cancelled lets a cancelled
        # fetch stop between chunks instead of running to the end.
        return await trio.to_thread.run_sync(self._copy, digest, dest, max_bytes)

    def _copy(self, digest: str, dest: Path, max_bytes: int) -> int:
        source = self._open_source(digest)
        with source:
            sink = ImageSink(dest, max_bytes, f"{self.directory}/{os.path.basename(source.name)}")
            try:
                while True:
                    trio.from_thread.check_cancelled()
                    try:
                        chunk = source.read(_CHUNK)
                    except OSError as exc:
                        raise TransientFetchError(f"reading {source.name}: {exc}") from exc
                    if not chunk:
                        return sink.finish()
                    sink.write(chunk)
            except BaseException:
                sink.abort()
                raise

    def _open_source(self, digest: str) -> BinaryIO:
        for name in transfer_names(digest):
            path = self.directory / name
            try:
                return open(path, "rb")
            except FileNotFoundError:
                continue
            except PermissionError as exc:
                raise FetchError(f"cannot read {path}: {exc.strerror}") from exc
            except OSError as exc:
                raise TransientFetchError(f"cannot open {path}: {exc}") from exc
        raise ImageNotFound(f"image {digest} is not in {self.directory}")


# -- HTTP(S) -----------------------------------------------------------------------


class HttpOrigin(Origin):
    """Images under an HTTP(S) base URL, fetched with h11 over trio streams.

    One connection per request (``Connection: close``): fetches are rare and
    large, so keep-alive would buy nothing and cost a pool. Redirects are not
    followed; point the base URL at the final location.
    """

    def __init__(
        self,
        base_url: str,
        *,
        connect_timeout: float = 10.0,
        read_timeout: float = 30.0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {base_url!r}")
        self.base_url = base_url.rstrip("/")
        self._https = parts.scheme == "https"
        self._host = parts.hostname
        self._port = parts.port or (443 if self._https else 80)
        self._host_header = parts.netloc.rpartition("@")[2]
        self._path = parts.path.rstrip("/")
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._ssl_context = ssl_context

    def describe(self) -> str:
        return self.base_url

    async def fetch(self, digest: str, dest: Path, *, max_bytes: int) -> int:
        for name in transfer_names(digest):
            size = await self._get(name, dest, max_bytes)
            if size is not None:
                return size
        raise ImageNotFound(f"image {digest} is not at {self.base_url}")

    async def _get(self, name: str, dest: Path, max_bytes: int) -> int | None:
        """GET ``<base>/<name>`` into ``dest``; ``None`` on 404."""
        target = f"{self._path}/{quote(name)}"
        url = f"{self.base_url}/{quote(name)}"
        stream = await self._connect(url)
        try:
            conn = h11.Connection(h11.CLIENT)
            request = h11.Request(
                method="GET",
                target=target,
                headers=[
                    ("Host", self._host_header),
                    ("User-Agent", _USER_AGENT),
                    ("Accept-Encoding", "identity"),
                    ("Connection", "close"),
                ],
            )
            await self._send(stream, _serialise(conn, request, h11.EndOfMessage()), url)
            response = await self._next_event(stream, conn, url)
            if not isinstance(response, h11.Response):
                raise TransientFetchError(f"GET {url}: connection closed before a response")
            if response.status_code == 404:
                return None
            if response.status_code >= 500 or response.status_code in (408, 429):
                raise TransientFetchError(f"GET {url}: HTTP {response.status_code}")
            if response.status_code != 200:
                raise FetchError(f"GET {url}: HTTP {response.status_code}")
            declared = _content_length(response)
            if declared is not None and declared > max_bytes + _COMPRESSED_SLACK:
                raise ImageTooLarge(f"GET {url}: {declared} bytes exceed {max_bytes}")
            return await self._receive_body(stream, conn, url, dest, max_bytes)
        finally:
            await _close_quietly(stream)

    async def _receive_body(
        self, stream: trio.abc.Stream, conn: h11.Connection, url: str, dest: Path, max_bytes: int
    ) -> int:
        sink = await trio.to_thread.run_sync(ImageSink, dest, max_bytes, url)
        try:
            while True:
                event = await self._next_event(stream, conn, url)
                if isinstance(event, h11.Data):
                    await trio.to_thread.run_sync(sink.write, bytes(event.data))
                elif isinstance(event, h11.EndOfMessage):
                    return await trio.to_thread.run_sync(sink.finish)
                else:
                    raise TransientFetchError(f"GET {url}: body ended early")
        except BaseException:
            sink.abort()
            raise

    async def _connect(self, url: str) -> trio.abc.Stream:
        try:
            with trio.fail_after(self._connect_timeout):
                tcp = await trio.open_tcp_stream(self._host, self._port)
                if not self._https:
                    return tcp
                context = self._ssl_context or ssl.create_default_context()
                tls = trio.SSLStream(tcp, context, server_hostname=self._host)
                await tls.do_handshake()
                return tls
        except trio.TooSlowError:
            raise TransientFetchError(
                f"GET {url}: connect timed out after {self._connect_timeout}s"
            ) from None
        except (OSError, trio.BrokenResourceError, ssl.SSLError) as exc:
            raise TransientFetchError(f"GET {url}: cannot connect: {exc}") from exc

    async def _send(self, stream: trio.abc.Stream, data: bytes, url: str) -> None:
        try:
            with trio.fail_after(self._read_timeout):
                await stream.send_all(data)
        except trio.TooSlowError:
            raise TransientFetchError(f"GET {url}: send timed out") from None
        except (OSError, trio.BrokenResourceError) as exc:
            raise TransientFetchError(f"GET {url}: send failed: {exc}") from exc

    async def _next_event(self, stream: trio.abc.Stream, conn: h11.Connection, url: str) -> object:
        while True:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError as exc:
                raise TransientFetchError(f"GET {url}: bad HTTP from server: {exc}") from exc
            if event is not h11.NEED_DATA:
                return event
            try:
                with trio.fail_after(self._read_timeout):
                    data = await stream.receive_some(_CHUNK)
            except trio.TooSlowError:
                raise TransientFetchError(f"GET {url}: no data for {self._read_timeout}s") from None
            except (OSError, trio.BrokenResourceError, ssl.SSLError) as exc:
                raise TransientFetchError(f"GET {url}: receive failed: {exc}") from exc
            conn.receive_data(bytes(data))


def _serialise(conn: h11.Connection, *events: h11.Request | h11.EndOfMessage) -> bytes:
    out = b""
    for event in events:
        out += conn.send(event) or b""
    return out


def _content_length(response: h11.Response) -> int | None:
    for name, value in response.headers:
        if name == b"content-length":
            return int(value)
    return None


async def _close_quietly(stream: trio.abc.Stream) -> None:
    with trio.CancelScope(shield=True), trio.move_on_after(1):
        try:
            await stream.aclose()
        except (OSError, trio.BrokenResourceError, ssl.SSLError):
            pass
