"""The no-op handler served directly, as a user would without huselet.

``wsgi`` is for gunicorn (sync workers), ``asgi`` for uvicorn: both read the
JSON body, call the same ``handler(event, context)`` huselet runs
(``bench/functions/noop``) and answer its result as JSON — no queue, no
sandbox, no Unix-socket hop.

    gunicorn -w 2 --chdir bench baseline_apps:wsgi
    uvicorn --app-dir bench --http httptools baseline_apps:asgi
"""

from __future__ import annotations

import json
import sys
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent / "functions" / "noop"))
from main import handler

CONTEXT = SimpleNamespace(request_id="r", function_name="noop")


def _call(body: bytes) -> bytes:
    return json.dumps(handler(json.loads(body or b"null"), CONTEXT)).encode()


def wsgi(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    length = int(environ.get("CONTENT_LENGTH") or 0)
    out = _call(environ["wsgi.input"].read(length))
    start_response(
        "200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(out)))]
    )
    return [out]


async def asgi(
    scope: dict[str, Any],
    receive: Callable[[], Awaitable[dict[str, Any]]],
    send: Callable[[dict[str, Any]], Awaitable[None]],
) -> None:
    if scope["type"] != "http":
        return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    out = _call(body)
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(out)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": out})
