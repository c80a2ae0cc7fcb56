"""Helpers for the tests of the image cache (``cache/``) and of the node's package
cache (``huselet/code/``): trees on disk, images, a second image writer,
subprocesses, and a real HTTP origin that counts what it was asked for.

``write_spec_image`` is an independent writer made from ``cache/FORMAT.md``
alone (it does not call the builder), so the tests check the spec and the
reader against each other and can craft images the builder would never make
(sealed but structurally wrong, foreign pyc magic, poisoned bytecode).
"""

from __future__ import annotations

import hashlib
import http.server
import os
import struct
import subprocess
import sys
import textwrap
import threading
import zlib
from collections import Counter
from pathlib import Path

import zstandard

from cache.builder import ImageInfo, pack_directory

REPO_ROOT = Path(__file__).resolve().parents[1]

HEADER = 4096
PAGE = 4096
MAGIC = b"\x89HLIMG\r\n"
DIGEST_AT = 120
CRC_AT = 4092

# A small function: a handler, a package with a subpackage, relative imports,
# data files and an executable script.
SAMPLE_TREE: dict[str, bytes | str] = {
    "handler.py": "from pkg.sub import helper\n\n"
    "def handle(event):\n    return helper.double(event)\n",
    "pkg/__init__.py": "NAME = 'pkg'\n",
    "pkg/data.txt": "hello from the image\n",
    "pkg/assets/logo.bin": bytes(range(256)) * 20,
    "pkg/sub/__init__.py": "",
    "pkg/sub/helper.py": "from .. import NAME\nfrom . import consts\n\n"
    "def double(x):\n    return x * consts.FACTOR\n",
    "pkg/sub/consts.py": "FACTOR = 2\n",
    "bin/run.sh": "#!/bin/sh\necho run\n",
}


def make_tree(root: Path, files: dict[str, bytes | str]) -> Path:
    """Create ``files`` (path → content; a path ending in "/" is a directory)."""
    for rel, content in files.items():
        target = root / rel
        if rel.endswith("/"):
            target.mkdir(parents=True, exist_ok=True)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        data = content.encode() if isinstance(content, str) else content
        target.write_bytes(data)
    return root


# A function with a subpackage, a relative import and a data file read through
# importlib.resources: what the worker's image importer must get right.
APP_FILES = {
    "main.py": """
        import os
        from importlib import resources
        from app.util import shout

        def handler(event, context):
            note = resources.files("app").joinpath("note.txt").read_text().strip()
            return {"reply": shout(event.get("word", "hi")), "note": note,
                    "file": __file__, "pid": os.getpid()}
    """,
    "app/__init__.py": "",
    "app/util.py": """
        from .consts import SUFFIX

        def shout(word):
            return word.upper() + SUFFIX
    """,
    "app/consts.py": "SUFFIX = '!'\n",
    "app/note.txt": "served from the image\n",
}


def write_tree(root: Path, files: dict[str, str]) -> Path:
    """:func:`make_tree` of source texts written indented in the test (dedented)."""
    return make_tree(root, {rel: textwrap.dedent(text) for rel, text in files.items()})


def build_image(root: Path, name: str, files: dict[str, str] | None = None) -> ImageInfo:
    """Pack a tree (default: the APP) into ``root/built/<digest>.hlimg``."""
    src = write_tree(root / "src" / name, files or APP_FILES)
    out = root / "built"
    out.mkdir(parents=True, exist_ok=True)
    return pack_directory(src, out)


def variant(tag: str) -> dict[str, str]:
    """The APP with a different constant: a distinct image per tag."""
    return {**APP_FILES, "app/consts.py": f"SUFFIX = '!{tag}'\n"}


def reseal(image: bytearray) -> bytearray:
    """Recompute image digest and header crc per FORMAT.md, after a deliberate edit."""
    header = bytearray(image[:HEADER])
    header[DIGEST_AT : DIGEST_AT + 32] = bytes(32)
    header[CRC_AT:HEADER] = bytes(4)
    digest = hashlib.sha256(bytes(header) + bytes(image[HEADER:])).digest()
    image[DIGEST_AT : DIGEST_AT + 32] = digest
    reseal_crc(image)
    return image


def reseal_crc(image: bytearray) -> bytearray:
    image[CRC_AT:HEADER] = struct.pack("<I", zlib.crc32(bytes(image[:CRC_AT])))
    return image


def digest_of(image: bytes | bytearray) -> str:
    return bytes(image[DIGEST_AT : DIGEST_AT + 32]).hex()


def write_spec_image(
    directory: Path,
    files: dict[str, bytes],
    *,
    pyc_magic: bytes = bytes(4),
    cache_tag: str = "",
    compat: int = 0,
    incompat: int = 0,
    version: int = 1,
) -> Path:
    """Write an image holding ``files`` (directories implied) as ``<digest>.hlimg``."""
    entries: dict[str, bytes | None] = {}
    for path, data in files.items():
        parts = path.split("/")
        for i in range(1, len(parts)):
            entries["/".join(parts[:i])] = None
        entries[path] = data
    ordered = sorted(entries, key=lambda p: p.encode())
    strtab = b"".join(p.encode() for p in ordered)
    index_offset = HEADER
    strtab_offset = index_offset + 64 * len(ordered)
    data_offset = -(-(strtab_offset + len(strtab)) // PAGE) * PAGE
    body = bytearray(data_offset)
    index = bytearray()
    path_at = 0
    for path in ordered:
        content = entries[path]
        encoded = path.encode()
        if content is None:
            record = (path_at, len(encoded), 2, 0, 0o755, 0, 0, 0, bytes(32))
        else:
            data = content
            offset = len(body) if data else 0
            if data:
                body += data + bytes(-len(data) % PAGE)
            record = (
                path_at,
                len(encoded),
                1,
                0,
                0o644,
                0,
                offset,
                len(data),
                hashlib.sha256(data).digest(),
            )
        index += struct.pack("<IHBBIIQQ32s", *record)
        path_at += len(encoded)
    image_size = len(body)
    header = struct.pack(
        "<8sIIIIQQQQQQQQQ4s4s16s32s",
        MAGIC,
        version,
        HEADER,
        PAGE,
        64,
        incompat,
        compat,
        image_size,
        index_offset,
        len(ordered),
        strtab_offset,
        len(strtab),
        data_offset,
        image_size - data_offset,
        pyc_magic,
        bytes(4),
        cache_tag.encode(),
        bytes(32),
    )
    body[: len(header)] = header
    body[index_offset : index_offset + len(index)] = index
    body[strtab_offset : strtab_offset + len(strtab)] = strtab
    reseal(body)
    out = directory / f"{digest_of(body)}.hlimg"
    out.write_bytes(body)
    return out


def entry_offset(index_number: int) -> int:
    """File offset of index entry ``index_number`` in a writer-made image."""
    return HEADER + 64 * index_number


def run_python(
    code: str, *args: str, flags: tuple[str, ...] = (), timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter that can import ``cache`` (and nothing polluted)."""
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    return subprocess.run(
        [sys.executable, *flags, "-c", code, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        check=False,
    )


def publish(image: Path, directory: Path, *, compressed: bool = True) -> Path:
    """Put an image where an origin serves it: ``<digest>.hlimg.zst`` or ``<digest>.hlimg``."""
    directory.mkdir(parents=True, exist_ok=True)
    data = image.read_bytes()
    if compressed:
        target = directory / f"{image.name}.zst"
        target.write_bytes(zstandard.ZstdCompressor(level=3).compress(data))
    else:
        target = directory / image.name
        target.write_bytes(data)
    return target


class OriginServer:
    """A real HTTP/1.1 server on 127.0.0.1 serving a directory, in a thread.

    ``requests`` counts GETs per file name; ``behaviour`` maps a file name to
    "stall" (accept, never answer), "chunked" (chunked transfer encoding) or
    an HTTP status to answer with instead of the file; ``status`` forces every
    answer's status (e.g. 503) while set.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.requests: Counter[str] = Counter()
        self.behaviour: dict[str, str | int] = {}
        self.status: int | None = None
        self._lock = threading.Lock()
        self._release = threading.Event()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                name = self.path.rsplit("/", 1)[-1]
                with server._lock:
                    server.requests[name] += 1
                how = server.behaviour.get(name, server.status)
                if how == "stall":
                    server._release.wait(30)
                    return
                if isinstance(how, int):
                    self._reply(how, b"no")
                    return
                path = server.directory / name
                if not path.is_file():
                    self._reply(404, b"not found")
                    return
                data = path.read_bytes()
                if how == "chunked":
                    self.send_response(200)
                    self.send_header("Transfer-Encoding", "chunked")
                    self.end_headers()
                    for start in range(0, len(data), 5000):
                        piece = data[start : start + 5000]
                        self.wfile.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
                    self.wfile.write(b"0\r\n\r\n")
                    return
                self._reply(200, data)

            def _reply(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def fetches(self, digest: str) -> int:
        """GETs for the image under either transfer name."""
        return self.requests[f"{digest}.hlimg.zst"] + self.requests[f"{digest}.hlimg"]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_port}/images"

    def __enter__(self) -> OriginServer:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._release.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(10)
