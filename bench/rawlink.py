"""The floor for bench_invoke: msgpack frames over a Unix socket straight to workers.

This process plays the daemon's part of the instance link and nothing more:
it listens on a Unix socket, starts ``workers`` real ``python -m
huselet.worker`` processes, answers their HELLO, and then sends REQUEST frames
and reads RESULTs — no HTTP, no queue, no scheduler. Requests beyond the
workers' credits wait in this process (a worker takes one at a time), so the
latency at high concurrency includes that wait, as any front end's would.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import trio
from loadgen import LoadResult, closed_loop

from protocol.frames import FrameDecoder, encode_frame
from protocol.link import (
    HELLO,
    PROTO_VERSION,
    PULL,
    READY,
    RESULT,
    Hello,
    Pull,
    Request,
    Result,
    Welcome,
    message_type,
)

MAX_FRAME = 1 << 20


class _Worker:
    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.decoder = FrameDecoder(max_frame=MAX_FRAME)
        self.credits = 0
        self.outstanding = 0  # requests sent whose RESULT is not read yet

    async def next_result(self) -> Result:
        while True:
            msg = await self.receive()
            if message_type(msg) == RESULT:  # the PULL that follows is read and skipped
                self.outstanding -= 1
                return Result.decode(msg)

    async def receive(self) -> dict:  # type: ignore[type-arg]
        while True:
            msg = self.decoder.next_frame()
            if msg is not None:
                return msg
            data = await self.stream.receive_some(65536)
            if not data:
                raise ConnectionError("worker closed its link")
            self.decoder.receive_data(data)


class RawWorkers:
    def __init__(self, home: Path, package: Path, handler: str, *, workers: int = 2) -> None:
        self.home = home
        self.package = package
        self.handler = handler
        self.count = workers
        self.procs: list[subprocess.Popen[bytes]] = []
        self.workers: list[_Worker] = []
        self._seq = 0

    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    async def start(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        path = self.home / "link.sock"
        listener = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
        await listener.bind(str(path))
        listener.listen(self.count)
        self._listener = listener
        for i in range(self.count):
            env = {
                "PATH": "/usr/bin:/bin",
                "LANG": "C.UTF-8",
                "HUSELET_FUNCTION": "noop",
                "HUSELET_PACKAGE": str(self.package),
                "HUSELET_HANDLER": self.handler,
                "HUSELET_KIND": "handler",
                "HUSELET_INSTANCE_ID": f"raw-{i}",
                "HUSELET_TOKEN": secrets.token_urlsafe(16),
                "HUSELET_LINK": str(path),
            }
            self.procs.append(
                subprocess.Popen(
                    [sys.executable, "-I", "-B", "-u", "-m", "huselet.worker"],
                    env=env,
                    start_new_session=True,
                )
            )
        with trio.fail_after(30):
            for _ in range(self.count):
                sock, _ = await listener.accept()
                worker = _Worker(trio.SocketStream(sock))
                hello = await worker.receive()
                assert message_type(hello) == HELLO, hello
                Hello.decode(hello)
                welcome = Welcome(PROTO_VERSION, "noop", MAX_FRAME).encode()
                await worker.stream.send_all(encode_frame(welcome))
                while worker.credits == 0:
                    msg = await worker.receive()
                    if message_type(msg) == PULL:
                        worker.credits += Pull.decode(msg).n
                    elif message_type(msg) != READY:
                        raise RuntimeError(f"worker sent {msg!r}")
                self.workers.append(worker)

    async def run_load(
        self,
        body: bytes,
        *,
        concurrency: int,
        duration: float,
        warmup: float,
        on_window: Callable[[str], None] | None = None,
    ) -> LoadResult:
        send, receive = trio.open_memory_channel[tuple[bytes, trio.Event, list[bool]]](concurrency)

        async def drive(worker: _Worker) -> None:
            # One request at a time per worker: it pulls one more with each result.
            while worker.outstanding:  # a reply left over from the previous round
                await worker.next_result()
            async for frame, done, ok in receive:
                # Not cut off by the end of a round: a half-sent frame or an unread
                # result would break the next round (a dead worker still times out).
                with trio.CancelScope(shield=True), trio.move_on_after(30):
                    worker.outstanding += 1
                    await worker.stream.send_all(frame)
                    ok.append((await worker.next_result()).ok)
                done.set()

        async def client(record: Callable[[float, bool], None]) -> None:
            while True:
                self._seq += 1
                frame = encode_frame(Request(f"r{self._seq}", body, "json", 10_000).encode())
                done, ok = trio.Event(), list[bool]()
                t0 = time.perf_counter()
                await send.send((frame, done, ok))
                await done.wait()
                record(t0, bool(ok and ok[0]))

        async with trio.open_nursery() as nursery:
            for worker in self.workers:
                nursery.start_soon(drive, worker)
            try:
                return await closed_loop(client, concurrency, duration, warmup, on_window)
            finally:
                nursery.cancel_scope.cancel()

    async def stop(self) -> None:
        for worker in self.workers:
            await worker.stream.aclose()
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
        self._listener.close()
        os.unlink(self.home / "link.sock")
