"""A link peer for serving tests: the test itself is the worker on a socketpair.

:func:`serving` runs :func:`huselet.dispatch.serving.serve` for one instance of
a pool that starts none (its starts are held), and hands the test the worker's
end of the link (:class:`Peer`) to speak the protocol at exactly the moments
that matter.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio

from huselet.config import FunctionSettings, NodeSettings
from huselet.dispatch.buffer import RequestBuffer
from huselet.dispatch.instance import InstanceRecord, InstanceState
from huselet.dispatch.invocation import Invocation
from huselet.dispatch.links import InstanceLink
from huselet.dispatch.pool import FunctionPool
from huselet.dispatch.serving import serve
from huselet.runtime.base import ExitStatus, InstanceHandle
from huselet.runtime.process import ProcessRuntime
from protocol.frames import FrameDecoder, encode_frame
from protocol.link import REQUEST, Pull, Request, message_type

DEADLINE_S = 30  # generous: these tests never wait on a clock, only on the peer


class SocketPeerHandle(InstanceHandle):
    """The 'process' behind the link is the test: it exits only when the test says."""

    def __init__(self) -> None:
        self.instance_id = "peer"
        self.pid = None
        self.gone = trio.Event()

    async def wait(self) -> ExitStatus:
        await self.gone.wait()
        return ExitStatus(0)

    def kill(self) -> None:
        self.gone.set()


class Peer:
    """The worker's end of the link: blocking reads and writes, driven by the test."""

    def __init__(self, sock: trio.socket.SocketType) -> None:
        self.sock = sock
        self.decoder = FrameDecoder(max_frame=64 << 20)

    async def send(self, *messages: dict[str, Any]) -> None:
        await self.sock.send(b"".join(encode_frame(m) for m in messages))

    async def request(self) -> Request:
        while True:
            msg = self.decoder.next_frame()
            if msg is not None:
                assert message_type(msg) == REQUEST
                return Request.decode(msg)
            data = await self.sock.recv(1 << 20)
            assert data, "the daemon closed the link"
            self.decoder.receive_data(data)


def make_pool(tmp: Path, nursery: trio.Nursery, **settings_: Any) -> FunctionPool:
    settings = FunctionSettings(name="fn", package=tmp, handler="main:handler", **settings_)
    # A real runtime (never run): the pool asks it only for its name here, and
    # no instance may start: the one under test is the socket peer.
    pool = FunctionPool(
        settings, ProcessRuntime({}, node=NodeSettings("n", tmp, tmp)), tmp / "fn.sock", nursery
    )
    pool.starts_held = "test: the instance is a socket peer"
    pool.buffer = RequestBuffer(100)
    return pool


async def start_instance(
    pool: FunctionPool, nursery: trio.Nursery, decoder: FrameDecoder | None = None
) -> tuple[InstanceRecord, Peer, SocketPeerHandle]:
    ours, theirs = trio.socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    record = InstanceRecord(pool.name)
    decoder = decoder or FrameDecoder(max_frame=64 << 20)
    record.link = InstanceLink(trio.SocketStream(ours), decoder)
    handle = SocketPeerHandle()
    record.handle = handle  # type: ignore[assignment]
    record.state = InstanceState.IDLE
    pool.instances[record.id] = record

    async def run() -> None:
        with record.scope:
            await serve(pool, record)

    nursery.start_soon(run)
    return record, Peer(theirs), handle


@asynccontextmanager
async def serving(
    tmp: Path, decoder: FrameDecoder | None = None, **settings: Any
) -> AsyncIterator[tuple[FunctionPool, InstanceRecord, Peer]]:
    """A pool whose one instance is served by serving.serve, the test as its worker
    (``decoder``: the daemon's side of the link, to watch what it parses)."""
    with trio.fail_after(DEADLINE_S):
        async with trio.open_nursery() as nursery:
            pool = make_pool(tmp, nursery, **settings)
            record, peer, handle = await start_instance(pool, nursery, decoder)
            yield pool, record, peer
            handle.kill()
            nursery.cancel_scope.cancel()


def submit(pool: FunctionPool, request_id: str, event: bytes = b"{}") -> Invocation:
    inv = Invocation(request_id, pool.name, event, "json", trio.current_time() + DEADLINE_S)
    pool.submit(inv)
    return inv


async def first_request(
    pool: FunctionPool, peer: Peer, request_id: str, event: bytes = b"{}"
) -> Invocation:
    """Give the instance one credit, submit ``request_id`` and read it as the worker."""
    await peer.send(Pull(1).encode())
    inv = submit(pool, request_id, event)
    assert (await peer.request()).id == request_id
    return inv
