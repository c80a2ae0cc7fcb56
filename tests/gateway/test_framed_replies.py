"""Framed calls are served without a task each, and their replies are batched.

Driven on a real socket pair: the connection admits calls into a staged
invoker (a small in-test one, standing in for the dispatcher), completes them,
and its reply writer writes real frames, which the test decodes on the other end.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any, Unpack

import pytest
import trio
from framedkit import StagedFake
from httpkit import SETTINGS, FakeInvoker

from huselet.dispatch.invocation import Invocation, InvokeOptions, InvokeResult
from huselet.errors import DeadlineExceeded
from huselet.gateway.core import InvokeCore
from huselet.gateway.counters import FramedCounter
from huselet.gateway.framed import FramedIngress, _FramedConnection
from protocol.frames import FrameDecoder, encode_frame
from protocol.ingress import Call


@asynccontextmanager
async def _connection(
    invoker: StagedFake, *, writer: bool = True
) -> AsyncIterator[tuple[FramedIngress, _FramedConnection, trio.socket.SocketType]]:
    a, peer = trio.socket.socketpair()
    with a, peer:
        core = InvokeCore(invoker, max_body=SETTINGS.max_body_bytes, token=None)
        ingress = FramedIngress(SETTINGS, core)
        conn = _FramedConnection(ingress, trio.SocketStream(a))
        async with trio.open_nursery() as nursery:
            if writer:
                nursery.start_soon(conn._write_replies)
            yield ingress, conn, peer
            nursery.cancel_scope.cancel()


def _call(conn: _FramedConnection, nursery: trio.Nursery, call_id: int, fn: str = "echo") -> None:
    conn.conn.inflight.add(call_id)  # as ServerConnection does for a CALL it read
    conn._begin_call(Call(call_id, fn, b"{}", request_id=f"r{call_id}"), nursery)


async def _replies(peer: trio.socket.SocketType, count: int) -> tuple[list[dict[str, Any]], int]:
    """``count`` reply frames, and how many reads they took."""
    decoder, frames, reads = FrameDecoder(), [], 0
    with trio.fail_after(10):  # hang guard, not a timing assertion
        while len(frames) < count:
            decoder.receive_data(await peer.recv(65536))
            reads += 1
            while (frame := decoder.next_frame()) is not None:
                frames.append(frame)
    return frames, reads


class BatchingFake(StagedFake):
    """Notes which batch (``StagedInvoker.batch``) each call was begun in."""

    def __init__(self) -> None:
        super().__init__()
        self.batches = 0
        self.open_batch: int | None = None
        self.begun_in: list[int | None] = []

    @contextmanager
    def batch(self) -> Iterator[None]:
        self.batches += 1
        self.open_batch = self.batches
        try:
            yield
        finally:
            self.open_batch = None

    def begin(
        self, function: str, event: bytes, kind: str, **options: Unpack[InvokeOptions]
    ) -> Invocation:
        self.begun_in.append(self.open_batch)
        return super().begin(function, event, kind, **options)


async def test_the_calls_of_one_read_are_begun_in_one_batch() -> None:
    invoker = BatchingFake()
    async with _connection(invoker) as (_, conn, peer), trio.open_nursery() as nursery:
        conn.conn.welcome()  # the handshake done
        nursery.start_soon(conn._read_calls, nursery)
        await peer.send(b"".join(encode_frame(Call(i, "echo", b"{}").encode()) for i in (1, 2, 3)))
        with trio.fail_after(10):  # hang guard, not a timing assertion
            while len(invoker.begun) < 3:
                await trio.sleep(0.001)
        batch = invoker.begun_in[0]
        assert batch is not None and invoker.begun_in == [batch] * 3
        nursery.cancel_scope.cancel()


async def test_calls_finishing_together_get_their_replies_in_one_send() -> None:
    invoker = StagedFake()
    async with _connection(invoker) as (ingress, conn, peer), trio.open_nursery() as nursery:
        for call_id in (1, 2, 3, 4):
            _call(conn, nursery, call_id)
        assert not conn._finished  # admitted and waiting: no task, no reply yet
        for inv in invoker.begun[:3]:  # as one read from an instance link would
            inv.complete(InvokeResult(inv.request_id.encode(), "text/plain"))
        frames, _ = await _replies(peer, 3)
        assert sorted(f["id"] for f in frames) == [1, 2, 3]
        assert {f["body"] for f in frames} == {b"r1", b"r2", b"r3"}
        assert ingress.counters[FramedCounter.REPLIES_BATCHED] == 2  # one send for three
        assert conn.conn.inflight == {4}
        assert [finished for _, finished in invoker.settled] == [True, True, True]
        # Settled with one clock reading for the batch, not one per call.
        assert len(set(invoker.settled_at)) == 1 and invoker.settled_at[0] is not None


async def test_the_only_call_in_flight_is_answered_without_the_writer() -> None:
    # A client that waits for each reply: no writer wake-up per call.
    invoker = StagedFake()
    async with (
        _connection(invoker, writer=False) as (ingress, conn, peer),
        trio.open_nursery() as nursery,
    ):
        for call_id in (1, 2):
            _call(conn, nursery, call_id)
            invoker.begun[-1].complete(InvokeResult(b"ok", "text/plain"))
            frames, _ = await _replies(peer, 1)
            assert frames[0]["id"] == call_id
        assert not conn.conn.inflight and not conn._finished and not conn._calls
        assert ingress.counters[FramedCounter.REPLIES_BATCHED] == 0


async def test_a_typed_error_becomes_the_callers_reply() -> None:
    invoker = StagedFake()
    async with _connection(invoker) as (_, conn, peer), trio.open_nursery() as nursery:
        _call(conn, nursery, 5)
        invoker.begun[0].complete(DeadlineExceeded("no reply within 10 ms"))
        _call(conn, nursery, 6, fn="Not A Name")  # refused before any invocation
        frames, _ = await _replies(peer, 2)
        by_id = {f["id"]: f for f in frames}
        assert by_id[5]["status"] == 504 and by_id[6]["status"] == 404
        assert len(invoker.begun) == 1


async def test_a_call_answered_while_it_is_submitted_still_gets_its_reply() -> None:
    invoker = StagedFake(answer_at_once=True)
    async with _connection(invoker) as (_, conn, peer), trio.open_nursery() as nursery:
        _call(conn, nursery, 7)
        frames, _ = await _replies(peer, 1)
        assert frames[0]["id"] == 7 and frames[0]["body"] == b"now"
        assert not conn._calls


async def test_a_connection_that_ends_abandons_its_unanswered_calls() -> None:
    invoker = StagedFake()
    async with _connection(invoker) as (ingress, conn, _), trio.open_nursery() as nursery:
        _call(conn, nursery, 1)
        _call(conn, nursery, 2)
        assert ingress.core.body_budget.used_bytes == 4
        conn._drop_calls()
        assert invoker.abandoned == invoker.begun  # none may run on for nobody
        assert [finished for _, finished in invoker.settled] == [False, False]
        assert ingress.core.body_budget.used_bytes == 0  # what they held is given back
        assert not conn._calls and not conn._finished


def test_the_framed_ingress_needs_an_invoker_it_can_stage() -> None:
    core = InvokeCore(FakeInvoker(), max_body=SETTINGS.max_body_bytes, token=None)
    with pytest.raises(TypeError, match="stage"):
        FramedIngress(SETTINGS, core)
