"""A framed connection held at 429 reads little at a time and keeps its in-flight bound.

On a real socket pair, with the real admission (a function over its rate: its
calls get 429s, held by the tarpit): the client pipelines far more than one
read's worth of calls once it is being held, and what the node took off the
socket is measured with FIONREAD on its end — the rest must still be in the kernel.
"""

from __future__ import annotations

import array
import fcntl
import termios
from dataclasses import dataclass, replace

import trio
import trio.testing
from framedkit import StagedFake
from httpkit import SETTINGS

from huselet.config.auth import AuthSettings, RateLimit
from huselet.gateway.admission import Admission
from huselet.gateway.admission_throttle import HELD_RECEIVE_BYTES
from huselet.gateway.core import InvokeCore
from huselet.gateway.framed import RECEIVE_BYTES, FramedIngress, _FramedConnection
from protocol.frames import encode_frame
from protocol.ingress import PROTO_VERSION, Call, Hello

MAX_INFLIGHT = 4
EVENT = b"x" * 900  # within SETTINGS.max_body_bytes
GUARD_S = 10  # hang guard, not a timing assertion
ALMOST_NEVER = RateLimit(rate_per_s=0.001, burst=1)


@dataclass(frozen=True)
class Capped:
    """A function with a rate so low that every call after the first is throttled."""

    tenant: str | None = None
    rate: RateLimit | None = ALMOST_NEVER
    max_concurrent: int | None = None


def unread(sock: trio.socket.SocketType) -> int:
    """Bytes waiting in the kernel on ``sock`` (FIONREAD)."""
    buf = array.array("i", [0])
    fcntl.ioctl(sock.fileno(), termios.FIONREAD, buf)
    return buf[0]


def calls(first: int, count: int) -> bytes:
    return b"".join(
        encode_frame(Call(i, "capped", EVENT, "bytes").encode())
        for i in range(first, first + count)
    )


async def send(peer: trio.socket.SocketType, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[await peer.send(view) :]


async def test_a_held_framed_connection_reads_a_little_at_a_time_within_its_inflight_bound() -> (
    None
):
    invoker = StagedFake()  # admitted calls stay in flight (never completed)
    settings = replace(SETTINGS, framed_max_inflight=MAX_INFLIGHT)
    core = InvokeCore(invoker, max_body=settings.max_body_bytes, token=None)
    # Holds far longer than the test: no held reply frees its slot meanwhile.
    admission = Admission(AuthSettings(throttle_delay_ms=600_000), functions=lambda _: Capped())
    ingress = FramedIngress(settings, core, admission)
    node_end, peer = trio.socket.socketpair()
    with node_end, peer, trio.fail_after(GUARD_S):
        conn = _FramedConnection(ingress, trio.SocketStream(node_end))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(conn.serve)
            # One call admitted (the rate's burst), one throttled and held: the
            # connection is being held from here on, two of its slots taken.
            await send(peer, encode_frame(Hello(PROTO_VERSION).encode()) + calls(1, 2))
            await trio.testing.wait_all_tasks_blocked()
            assert len(invoker.begun) == 1 and len(conn.conn.inflight) == 2
            # Now a flood: far more than one held read, less than one normal read.
            flood = calls(3, 70)
            assert HELD_RECEIVE_BYTES * 4 < len(flood) < RECEIVE_BYTES
            await send(peer, flood)
            await trio.testing.wait_all_tasks_blocked()
            taken = len(flood) - unread(node_end)
            assert taken <= HELD_RECEIVE_BYTES, taken
            # Its two free slots went to two more (throttled, held) calls, no more.
            assert len(conn.conn.inflight) == MAX_INFLIGHT and len(invoker.begun) == 1
            nursery.cancel_scope.cancel()
