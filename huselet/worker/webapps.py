"""Serving an unchanged WSGI or ASGI app, one request at a time, inside an instance.

``functions[].app = "module:app"`` with ``kind = "wsgi"`` or ``"asgi"``: the
app object is imported once (in the fork zygote when there is one) and each
request the ingress forwarded becomes a WSGI ``environ`` / ASGI ``http``
scope. The app is mounted at ``/v1/invoke/{function}``: ``SCRIPT_NAME`` /
``root_path`` say so (so ``url_for`` builds public URLs) and ``PATH_INFO`` /
the route path is the part after it.

ASGI apps run on one asyncio loop per instance, created in the instance
(never in the zygote: a loop's descriptors do not survive the fork's
descriptor clean-up). The app's ``lifespan`` startup runs before the instance
reports ready and its shutdown when the instance stops; an app without
lifespan support is served anyway, as uvicorn does.
"""

from __future__ import annotations

import io
import sys
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import unquote_to_bytes

from protocol.link import HttpRequest

HttpReply = tuple[int, list[tuple[str, str]], bytes]
MOUNT = "/v1/invoke/"
LIFESPAN_SHUTDOWN_S = 1.0  # within the daemon's stop grace (2 s)


class AppError(Exception):
    """The app broke its interface (no response, malformed status…); message is caller-safe."""


def mount_point(function: str) -> str:
    return f"{MOUNT}{function}"


def _host(http: HttpRequest) -> tuple[str, str]:
    for name, value in http.headers:
        if name == "host":
            host, _, port = value.rpartition(":") if value.count(":") == 1 else (value, "", "")
            return (host or value), (port or "80")
    return "localhost", "80"


# --- WSGI (PEP 3333) -----------------------------------------------------------------


def wsgi_environ(http: HttpRequest, body: bytes, function: str) -> dict[str, Any]:
    server, port = _host(http)
    environ: dict[str, Any] = {
        "REQUEST_METHOD": http.method,
        "SCRIPT_NAME": mount_point(function),
        # PEP 3333: the URL-decoded path as bytes, carried in a latin-1 str.
        "PATH_INFO": unquote_to_bytes(http.path).decode("latin-1"),
        "QUERY_STRING": http.query,
        "SERVER_NAME": server,
        "SERVER_PORT": port,
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": http.source_ip,
        "CONTENT_LENGTH": str(len(body)),
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(body),
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": False,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
    }
    for name, value in http.headers:
        if name == "content-type":
            environ["CONTENT_TYPE"] = value
            continue
        if name == "content-length":
            continue  # ours above: the body is complete
        key = "HTTP_" + name.upper().replace("-", "_")
        if "_" in name:
            continue  # as gunicorn: foo_bar and foo-bar must not collide
        environ[key] = f"{environ[key]},{value}" if key in environ else value
    return environ


def call_wsgi(
    app: Callable[..., Iterable[bytes]], http: HttpRequest, body: bytes, function: str
) -> HttpReply:
    started: list[Any] = []
    chunks: list[bytes] = []

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        if exc_info is not None and started and started[0] is not None and chunks:
            raise exc_info[1].with_traceback(exc_info[2])  # PEP 3333: too late to change
        started[:] = [status, headers]
        return chunks.append  # the legacy write() callable

    result = app(wsgi_environ(http, body, function), start_response)
    try:
        for chunk in result:
            if chunk:
                chunks.append(bytes(chunk))
    finally:
        close = getattr(result, "close", None)
        if close is not None:
            close()
    if not started:
        raise AppError("the WSGI app returned without calling start_response")
    status_line, headers = started
    try:
        status = int(str(status_line).split(" ", 1)[0])
    except ValueError:
        raise AppError(f"the WSGI app gave a malformed status {status_line!r}") from None
    if not 200 <= status <= 599:
        raise AppError(f"the WSGI app gave status {status}; allowed 200..599")
    return status, [(str(k), str(v)) for k, v in headers], b"".join(chunks)


# --- ASGI (3.0) ----------------------------------------------------------------------


class AsgiServer:
    """One ASGI app on this instance's event loop: lifespan plus one request at a time."""

    def __init__(self, app: Any, function: str) -> None:
        self.app = app
        self.function = function
        self.loop: Any = None
        self.state: dict[str, Any] = {}
        self._lifespan: Any = None
        self._shutdown: Any = None
        self._lifespan_done: Any = None

    def start(self, loop: Any) -> None:
        """Run the app's lifespan startup (before the instance reports ready)."""
        import asyncio

        self.loop = loop
        startup = loop.create_future()
        self._shutdown = asyncio.Event()
        self._lifespan_done = loop.create_future()
        messages = iter([{"type": "lifespan.startup"}])

        async def receive() -> dict[str, Any]:
            try:
                return next(messages)
            except StopIteration:
                await self._shutdown.wait()
                return {"type": "lifespan.shutdown"}

        async def send(message: dict[str, Any]) -> None:
            kind = message.get("type")
            if kind == "lifespan.startup.complete" and not startup.done():
                startup.set_result(None)
            elif kind == "lifespan.startup.failed" and not startup.done():
                startup.set_exception(
                    AppError(f"lifespan startup failed: {message.get('message', '')}")
                )
            elif (
                kind in ("lifespan.shutdown.complete", "lifespan.shutdown.failed")
                and not self._lifespan_done.done()
            ):
                self._lifespan_done.set_result(None)

        async def lifespan() -> None:
            scope = {
                "type": "lifespan",
                "asgi": {"version": "3.0", "spec_version": "2.0"},
                "state": self.state,
            }
            try:
                await self.app(scope, receive, send)
            except BaseException as exc:
                if not startup.done():
                    # No lifespan support (the app raised on the scope type): serve anyway.
                    startup.set_result(None)
                    return
                if not isinstance(exc, Exception):
                    raise
            finally:
                if not self._lifespan_done.done():
                    self._lifespan_done.set_result(None)

        self._lifespan = loop.create_task(lifespan())
        loop.run_until_complete(startup)

    def stop(self) -> None:
        """Lifespan shutdown, bounded: the instance is going away either way."""
        import asyncio

        if self._lifespan is None or self._lifespan.done():
            return
        self._shutdown.set()
        try:
            self.loop.run_until_complete(asyncio.wait_for(self._lifespan_done, LIFESPAN_SHUTDOWN_S))
        except BaseException:
            pass

    async def call(self, http: HttpRequest, body: bytes) -> HttpReply:
        import asyncio

        root = mount_point(self.function)
        server, port = _host(http)
        path = unquote_to_bytes(http.path).decode("utf-8", "replace")
        scope = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": "1.1",
            "method": http.method,
            "scheme": "http",
            # The full path with the mount point in front, which Starlette and
            # others strip again using root_path (the ASGI convention).
            "path": root + path,
            "raw_path": (root + http.path).encode("latin-1", "replace"),
            "root_path": root,
            "query_string": http.query.encode("latin-1", "replace"),
            "headers": [(k.encode("latin-1"), v.encode("latin-1")) for k, v in http.headers],
            "client": (http.source_ip, 0) if http.source_ip else None,
            "server": (server, int(port) if port.isdigit() else 80),
            "state": dict(self.state),
        }
        sent_request = False
        finished = asyncio.Event()
        start: dict[str, Any] = {}
        chunks: list[bytes] = []

        async def receive() -> dict[str, Any]:
            nonlocal sent_request
            if not sent_request:
                sent_request = True
                return {"type": "http.request", "body": body, "more_body": False}
            await finished.wait()  # the client "disconnects" once the reply is complete
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            kind = message.get("type")
            if kind == "http.response.start":
                if start:
                    raise AppError("the ASGI app started the response twice")
                start.update(message)
            elif kind == "http.response.body":
                if not start:
                    raise AppError("the ASGI app sent a body before the response start")
                chunks.append(bytes(message.get("body", b"")))
                if not message.get("more_body", False):
                    finished.set()

        try:
            await self.app(scope, receive, send)
        except Exception:
            if not finished.is_set():
                raise
            # Starlette's ServerErrorMiddleware sends its 500 and then re-raises
            # for the server's log: the response stands, the traceback is logged.
            import traceback

            traceback.print_exc()
        if not start:
            raise AppError("the ASGI app returned without starting a response")
        status = start.get("status")
        if not isinstance(status, int) or not 200 <= status <= 599:
            raise AppError(f"the ASGI app gave status {status!r}; allowed 200..599")
        headers = [
            (bytes(k).decode("latin-1"), bytes(v).decode("latin-1"))
            for k, v in start.get("headers", [])
        ]
        return status, headers, b"".join(chunks)
