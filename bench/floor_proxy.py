"""The least a Trio front end can do per framed call: the floor under huselet's daemon CPU.

bench_invoke's ``floor-framed`` mode runs this file as a process of its own
and loads it exactly as it loads huselet's framed ingress. It accepts framed
ingress connections (``protocol.ingress``, the daemon's own sans-IO codec),
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
--handler main:handler --workers 2 --port N``; prints ``listening`` once
the workers are ready.
"""

from __future__ import annotations

import argparse
import collections
import os
import socket
from pathlib import Path

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

    def write(self, data: bytes) -> None:
        self.pending += data

    def flush(self) -> None:
        if not self.pending or self.flushing:
            return
        try:
            sent = os.write(self.fd, self.pending)
        except BlockingIOError:
            sent = 0
        del self.pending[:sent]
        if self.pending:
            self.flushing = True
            self.nursery.start_soon(self._drain)

    async def _drain(self) -> None:
        while self.pending:
            await trio.lowlevel.wait_writable(self.fd)
            try:
                sent = os.write(self.fd, self.pending)
            except BlockingIOError:
                continue
            del self.pending[:sent]
        self.flushing = False


class Floor:
    def __init__(self, workers: list[_Worker], nursery: trio.Nursery) -> None:
        self.nursery = nursery
        self.links: list[tuple[_Worker, _Out]] = []
        for worker in workers:
            # The link's descriptor, used directly: os.read/os.write on a
            # non-blocking socket, no trio stream wrapper per call.
            self.links.append((worker, _Out(worker.stream.socket.fileno(), nursery)))
        self.waiting: collections.deque[tuple[str, bytes, str]] = collections.deque()
        self.calls: dict[str, tuple[ServerConnection, _Out, int]] = {}
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
                    conn, conn_out, call_id = self.calls.pop(rid)
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

    async def serve_client(self, sock: socket.socket) -> None:
        conn = ServerConnection()
        out = _Out(sock.fileno(), self.nursery)
        try:
            while True:
                await trio.lowlevel.wait_readable(sock)
                try:
                    data = sock.recv(RECEIVE_BYTES)
                except BlockingIOError:
                    continue
                if not data:
                    return
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
                out.flush()
                self._send()
        except (ProtocolError, OSError):
            return
        finally:
            sock.close()

    async def accept(self, listener: socket.socket) -> None:
        while True:
            await trio.lowlevel.wait_readable(listener)
            try:
                sock, _ = listener.accept()
            except BlockingIOError:
                continue
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.nursery.start_soon(self.serve_client, sock)


async def main(args: argparse.Namespace) -> None:
    workers = RawWorkers(Path(args.home), Path(args.package), args.handler, workers=args.workers)
    await workers.start()
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", args.port))
    listener.listen(128)
    listener.setblocking(False)
    try:
        async with trio.open_nursery() as nursery:
            floor = Floor(workers.workers, nursery)
            for worker, out in floor.links:
                nursery.start_soon(floor.serve_worker, worker, out)
            nursery.start_soon(floor.accept, listener)
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
    ap.add_argument("--port", type=int, required=True)
    return ap.parse_args(argv)


if __name__ == "__main__":
    try:
        trio.run(main, parse())
    except KeyboardInterrupt:
        pass
