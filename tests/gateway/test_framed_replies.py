"""Framed replies that finish in the same loop tick share one send.

Driven on a real socket pair: the connection's reply path writes real frames,
which the test decodes on the other end.
"""

from __future__ import annotations

import trio
from httpkit import SETTINGS, FakeInvoker

from huselet.gateway.core import InvokeCore
from huselet.gateway.counters import FramedCounter
from huselet.gateway.framed import FramedIngress, _FramedConnection
from protocol.frames import FrameDecoder
from protocol.ingress import Reply


def _connection(sock: trio.socket.SocketType) -> tuple[FramedIngress, _FramedConnection]:
    core = InvokeCore(FakeInvoker(), max_body=SETTINGS.max_body_bytes, token=None)
    ingress = FramedIngress(SETTINGS, core)
    return ingress, _FramedConnection(ingress, trio.SocketStream(sock))


async def _reply_ids(peer: trio.socket.SocketType, count: int) -> list[int]:
    decoder, ids = FrameDecoder(), []
    with trio.fail_after(10):  # hang guard, not a timing assertion
        while len(ids) < count:
            decoder.receive_data(await peer.recv(65536))
            while (frame := decoder.next_frame()) is not None:
                ids.append(frame["id"])
    return ids


async def _reply(conn: _FramedConnection, call_id: int) -> None:
    await conn._send_reply(conn.conn.reply(Reply(call_id, 200, f"r{call_id}", body=b"{}")))


async def test_replies_finishing_together_go_out_in_one_send() -> None:
    a, peer = trio.socket.socketpair()
    with a, peer:
        ingress, conn = _connection(a)
        conn.conn.inflight.update({1, 2, 3, 4})  # 4 stays in flight throughout
        async with trio.open_nursery() as nursery:
            for call_id in (1, 2, 3):
                nursery.start_soon(_reply, conn, call_id)
        assert sorted(await _reply_ids(peer, 3)) == [1, 2, 3]
        assert ingress.counters[FramedCounter.REPLIES_BATCHED] == 2
        assert conn._batch is None


async def test_a_lone_reply_is_sent_at_once() -> None:
    a, peer = trio.socket.socketpair()
    with a, peer:
        ingress, conn = _connection(a)
        conn.conn.inflight.add(7)
        with trio.testing.assert_no_checkpoints():
            await _reply(conn, 7)  # nothing else in flight: no batch, no yield
        assert await _reply_ids(peer, 1) == [7]
        assert ingress.counters[FramedCounter.REPLIES_BATCHED] == 0


async def test_cancelling_the_batch_opener_loses_no_joined_reply() -> None:
    a, peer = trio.socket.socketpair()
    with a, peer:
        ingress, conn = _connection(a)
        conn.conn.inflight.update({1, 2, 3, 9})
        async with trio.open_nursery() as nursery:
            for call_id in (1, 2, 3):
                nursery.start_soon(_reply, conn, call_id)
            # Cancelled before they run: the opener holds the others' replies while
            # it yields, and a cancellation then must not drop what joined its batch.
            nursery.cancel_scope.cancel()
        assert sorted(await _reply_ids(peer, 3)) == [1, 2, 3]
        assert ingress.counters[FramedCounter.REPLIES_BATCHED] == 2  # they did join
        assert conn._batch is None
        conn.conn.inflight.add(5)
        await _reply(conn, 5)  # and the next reply still goes out
        assert await _reply_ids(peer, 1) == [5]
