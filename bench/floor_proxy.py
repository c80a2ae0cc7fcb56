"""The least a Trio front end can do per call: the floor under huselet's daemon CPU.

bench_invoke's ``floor-framed`` and ``floor-http`` modes run this file as a
process of its own and load it exactly as they load huselet's ingresses. It
accepts framed ingress connections (``protocol.ingress``, the daemon's own
sans-IO codec) and HTTP/1.1 keep-alive connections (parsed by httptools, as the
daemon parses them; any POST is a call of the one function),
starts ``--workers`` real ``python -m huselet.worker`` processes on an instance
link (``protocol.link``, via ``rawlink.RawWorkers``), and forwards each CALL as
a REQUEST to a worker with credit, relaying the RESULT back as a REPLY.

It does nothing else a node must do: no admission, deadlines, queue bounds,
auth, request ids, logs, metrics, instance lifecycle or health. It is written
to be cheap (one task per socket, writes coalesced per received batch and sent
without a task switch, frames decoded in bulk), so its CPU per call is roughly
what any Trio + msgpack process pays on this machine to move one call in and
out — the daemon's CPU above it is what the node's features cost, and a target
below it cannot be met by a Trio daemon on this machine.

Usage (bench_invoke does this): ``floor_proxy.py --home DIR --package DIR
--handler main:handler --workers 2 --port N --http-port M``; prints
``listening`` once the workers are ready.
"""

from __future__ import annotations

import argparse
import collections
import os
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path

import httptools
import trio
from rawlink import RawWorkers, _Worker

from protocol.errors import ProtocolError
from protocol.frames import encode_frame
from protocol.ingress import PONG_FRAME as INGRESS_PONG
from protocol.ingress import Call, Hello, Ping, Reply, ServerConnection
from protocol.link import PULL, RESULT, Pull, Request, message_type, result_fields

RECEIVE_BYTES = 65536
CONTENT_TYPES = {"json": "application/json", "text": "text/plain; charset=utf-8"}


class _Out:
    """One socket's outgoing bytes: sent at once when the kernel takes them, else
    by a flusher task that waits for the socket to become writable."""

    def __init__(self, fd: int, nursery: trio.Nursery) -> None:
        self.fd = fd
        self.nursery = nursery
        self.pending = bytearray()
        self.flushing = False
        self.closed = False

    def write(self, data: bytes) -> None:
        self.pending += data

    def flush(self) -> None:
        if not self.pending or self.flushing or self.closed:
            return
        try:
            sent = os.write(self.fd, self.pending)
        except BlockingIOError:
            sent = 0
        except OSError:  # the peer went away: its replies have nowhere to go
            self.close()
            return
        del self.pending[:sent]
        if self.pending:
            self.flushing = True
            self.nursery.start_soon(self._drain)

    async def _drain(self) -> None:
        while self.pending and not self.closed:
            try:
                await trio.lowlevel.wait_writable(self.fd)
            except trio.ClosedResourceError:
                break
            try:
                sent = os.write(self.fd, self.pending)
            except BlockingIOError:
                continue
            except OSError:
                self.close()
                break
            del self.pending[:sent]
        self.flushing = False

    def close(self) -> None:
        """No more writes: the descriptor is closed (or about to be) by its reader,
        and its number may soon belong to another connection."""
        if self.flushing and not self.closed:
            trio.lowlevel.notify_closing(self.fd)  # wakes the flusher before the close
        self.closed = True
        self.pending.clear()


class Floor:
    def __init__(self, workers: list[_Worker], nursery: trio.Nursery) -> None:
        self.nursery = nursery
        self.links: list[tuple[_Worker, _Out]] = []
        for worker in workers:
            # The link's descriptor, used directly: os.read/os.write on a
            # non-blocking socket, no trio stream wrapper per call.
            self.links.append((worker, _Out(worker.stream.socket.fileno(), nursery)))
        self.waiting: collections.deque[tuple[str, bytes, str]] = collections.deque()
        # request id -> where its reply goes: a framed connection and call id,
        # or an HTTP connection (replies in request order on it)
        self.calls: dict[str, tuple[ServerConnection, _Out, int] | _HttpConn] = {}
        self.seq = 0

    def _send(self) -> None:
        """Hand waiting requests to workers with credit, then flush each link once."""
        for worker, out in self.links:
            while worker.credits and self.waiting:
                rid, event, kind = self.waiting.popleft()
                worker.credits -= 1
                out.write(encode_frame(Request(rid, event, kind, 10_000).encode()))
            out.flush()

    async def serve_worker(self, worker: _Worker, out: _Out) -> None:
        fd = out.fd
        touched: set[_Out] = set()
        while True:
            await trio.lowlevel.wait_readable(fd)
            try:
                data = os.read(fd, RECEIVE_BYTES)
            except BlockingIOError:
                continue
            if not data:
                raise ConnectionError("a worker closed its link")
            worker.decoder.receive_data(data)
            while (msg := worker.decoder.next_frame()) is not None:
                kind = message_type(msg)
                if kind == RESULT:
                    rid, ok, body, body_kind, _error, _http = result_fields(msg)
                    target = self.calls.pop(rid)
                    if isinstance(target, _HttpConn):
                        target.answer(rid, ok, body, body_kind)
                        touched.add(target.out)
                        continue
                    conn, conn_out, call_id = target
                    reply = Reply(
                        call_id,
                        200 if ok else 502,
                        rid,
                        body=body,
                        content_type=CONTENT_TYPES.get(body_kind, "application/octet-stream"),
                        error_code=None if ok else "handler_error",
                        error_message=None if ok else "the handler failed",
                    )
                    conn_out.write(conn.reply(reply))
                    touched.add(conn_out)
                elif kind == PULL:
                    worker.credits += Pull.decode(msg).n
            for conn_out in touched:
                conn_out.flush()
            touched.clear()
            self._send()

    async def _read_until_closed(
        self, sock: socket.socket, out: _Out, feed: Callable[[bytes], None]
    ) -> None:
        """Feed what ``sock`` receives to ``feed``, then hand waiting calls out,
        until the client closes or breaks its protocol; then close its socket."""
        try:
            while True:
                await trio.lowlevel.wait_readable(sock)
                try:
                    data = sock.recv(RECEIVE_BYTES)
                except BlockingIOError:
                    continue
                if not data:
                    return
                feed(data)
                out.flush()
                self._send()
        except (ProtocolError, httptools.HttpParserError, OSError):
            return
        finally:
            out.close()
            sock.close()

    async def serve_client(self, sock: socket.socket) -> None:
        conn = ServerConnection()
        out = _Out(sock.fileno(), self.nursery)

        def feed(data: bytes) -> None:
            conn.receive_data(data)
            while (event := conn.next_event()) is not None:
                if isinstance(event, Call):
                    self.seq += 1
                    rid = str(self.seq)
                    self.calls[rid] = (conn, out, event.id)
                    self.waiting.append((rid, event.event, event.kind))
                elif isinstance(event, Hello):
                    out.write(conn.welcome())
                elif isinstance(event, Ping):
                    out.write(INGRESS_PONG)

        await self._read_until_closed(sock, out, feed)

    async def serve_http(self, sock: socket.socket) -> None:
        conn = _HttpConn(self, _Out(sock.fileno(), self.nursery))
        await self._read_until_closed(sock, conn.out, httptools.HttpRequestParser(conn).feed_data)

    async def accept(self, listener: socket.socket, serve: Serve) -> None:
        while True:
            await trio.lowlevel.wait_readable(listener)
            try:
                sock, _ = listener.accept()
            except BlockingIOError:
                continue
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.nursery.start_soon(serve, sock)


Serve = Callable[[socket.socket], Awaitable[None]]


class _HttpConn:
    """httptools' callbacks for one HTTP connection: each complete request is a
    call; replies go out in request order (HTTP/1.1 has no ids)."""

    def __init__(self, floor: Floor, out: _Out) -> None:
        self.floor = floor
        self.out = out
        self.body = bytearray()
        self.order: collections.deque[str] = collections.deque()
        self.done: dict[str, bytes] = {}

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        floor = self.floor
        floor.seq += 1
        rid = str(floor.seq)
        floor.calls[rid] = self
        floor.waiting.append((rid, bytes(self.body), "json"))
        self.order.append(rid)
        self.body.clear()

    def answer(self, rid: str, ok: bool, body: bytes, kind: str) -> None:
        head = b"HTTP/1.1 200 OK" if ok else b"HTTP/1.1 502 Bad Gateway"
        ctype = CONTENT_TYPES.get(kind, "application/octet-stream").encode()
        self.done[rid] = b"%s\r\ncontent-type: %s\r\ncontent-length: %d\r\n\r\n%s" % (
            head,
            ctype,
            len(body),
            body,
        )
        while self.order and self.order[0] in self.done:
            self.out.write(self.done.pop(self.order.popleft()))


def _listen(port: int) -> socket.socket:
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen(128)
    listener.setblocking(False)
    return listener


async def main(args: argparse.Namespace) -> None:
    workers = RawWorkers(Path(args.home), Path(args.package), args.handler, workers=args.workers)
    await workers.start()
    framed, http = _listen(args.port), _listen(args.http_port)
    try:
        async with trio.open_nursery() as nursery:
            floor = Floor(workers.workers, nursery)
            for worker, out in floor.links:
                nursery.start_soon(floor.serve_worker, worker, out)
            nursery.start_soon(floor.accept, framed, floor.serve_client)
            nursery.start_soon(floor.accept, http, floor.serve_http)
            print("listening", " ".join(str(p) for p in workers.pids()), flush=True)
    finally:
        with trio.CancelScope(shield=True):
            await workers.stop()


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--home", required=True)
    ap.add_argument("--package", required=True)
    ap.add_argument("--handler", default="main:handler")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--port", type=int, required=True, help="framed ingress (TCP, 127.0.0.1)")
    ap.add_argument("--http-port", type=int, required=True, help="HTTP/1.1 (TCP, 127.0.0.1)")
    return ap.parse_args(argv)


if __name__ == "__main__":
    try:
        trio.run(main, parse())
    except KeyboardInterrupt:
        pass
