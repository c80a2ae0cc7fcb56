"""Helpers for the package-cache tests of ``huselet/``: images on disk and a real
HTTP origin (``http.server`` in a thread) that counts what it was asked for."""

from __future__ import annotations

import http.server
import socket
import textwrap
import threading
from collections import Counter
from pathlib import Path

import zstandard

from cache.builder import ImageInfo, pack_directory

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
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return root


def build_image(root: Path, name: str, files: dict[str, str] | None = None) -> ImageInfo:
    """Pack a tree (default: the APP) into ``root/built/<digest>.hlimg``."""
    src = write_tree(root / "src" / name, files or APP_FILES)
    out = root / "built"
    out.mkdir(parents=True, exist_ok=True)
    return pack_directory(src, out)


def variant(tag: str) -> dict[str, str]:
    """The APP with a different constant: a distinct image per tag."""
    return {**APP_FILES, "app/consts.py": f"SUFFIX = '!{tag}'\n"}


def write_zst(image: Path, directory: Path) -> Path:
    """The transfer copy ``<digest>.hlimg.zst`` of ``image`` in ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / (image.name + ".zst")
    target.write_bytes(zstandard.ZstdCompressor().compress(image.read_bytes()))
    return target


def closed_port() -> int:
    """A localhost port nobody listens on (connection refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class OriginServer:
    """A real HTTP/1.1 server on 127.0.0.1 serving ``directory`` from a thread.

    ``requests`` counts GETs per file name; ``status`` forces every answer's
    status (e.g. 503) while set.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.requests: Counter[str] = Counter()
        self.status: int | None = None
        self._lock = threading.Lock()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                name = self.path.rsplit("/", 1)[-1]
                with server._lock:
                    server.requests[name] += 1
                path = server.directory / name
                if server.status is not None:
                    self._reply(server.status, b"forced")
                elif not path.is_file():
                    self._reply(404, b"not found")
                else:
                    self._reply(200, path.read_bytes())

            def _reply(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/images"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def fetches(self, digest: str) -> int:
        """GETs for the image under either transfer name."""
        return self.requests[f"{digest}.hlimg.zst"] + self.requests[f"{digest}.hlimg"]

    def __enter__(self) -> OriginServer:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(10)
