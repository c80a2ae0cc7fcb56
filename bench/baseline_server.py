"""Baseline for bench_invoke: the same handler behind a minimal HTTP server in
one process (trio + h11, JSON in and out, keep-alive), no queue, no sandbox,
no Unix-socket hop. What huselet adds on top of this is its overhead.

Usage: python bench/baseline_server.py PORT PACKAGE_DIR MODULE:FUNCTION
"""

from __future__ import annotations

import importlib
import json
import sys
from types import SimpleNamespace

import h11
import trio


def load(package: str, spec: str):  # type: ignore[no-untyped-def]
    sys.path.insert(0, package)
    module, _, attr = spec.partition(":")
    return getattr(importlib.import_module(module), attr)


async def serve_connection(stream: trio.SocketStream, handler) -> None:  # type: ignore[no-untyped-def]
    conn = h11.Connection(h11.SERVER)
    async with stream:
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = await stream.receive_some(65536)
                conn.receive_data(data)
                if not data:
                    return
                continue
            if isinstance(event, h11.Request):
                body = b""
                while True:
                    ev = conn.next_event()
                    if ev is h11.NEED_DATA:
                        conn.receive_data(await stream.receive_some(65536))
                    elif isinstance(ev, h11.Data):
                        body += ev.data
                    elif isinstance(ev, h11.EndOfMessage):
                        break
                ctx = SimpleNamespace(request_id="r", function_name="noop")
                out = json.dumps(handler(json.loads(body or b"null"), ctx)).encode()
                headers = [("content-type", "application/json"), ("content-length", str(len(out)))]
                await stream.send_all(
                    conn.send(h11.Response(status_code=200, headers=headers))
                    + conn.send(h11.Data(data=out))
                    + conn.send(h11.EndOfMessage())
                )
                conn.start_next_cycle()
            elif isinstance(event, h11.ConnectionClosed) or event is h11.PAUSED:
                return


async def main() -> None:
    port, package, spec = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    handler = load(package, spec)

    async def on_conn(stream: trio.SocketStream) -> None:
        try:
            await serve_connection(stream, handler)
        except (trio.BrokenResourceError, h11.RemoteProtocolError):
            pass

    listeners = await trio.open_tcp_listeners(port, host="127.0.0.1")
    print("ready", flush=True)
    await trio.serve_listeners(on_conn, listeners)


if __name__ == "__main__":
    trio.run(main)
