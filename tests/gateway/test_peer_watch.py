"""PeerWatch: a held reply ends early only when its client has gone, on real sockets.

Trio's autojump clock stands in for the hold's minutes (a hold that runs its full
length takes no real time); the client's FIN is real.
"""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio
import trio.testing

from huselet.gateway.linger import peer_closed
from huselet.gateway.peer_watch import PeerWatch

HOLD_S = 600.0


@asynccontextmanager
async def watching(client: socket.socket) -> AsyncIterator[PeerWatch]:
    """A running PeerWatch, the client's requests queued on the server end."""
    client.sendall(b"queued requests keep the socket readable")
    watch = PeerWatch()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(watch.run)
        yield watch
        nursery.cancel_scope.cancel()


async def test_a_hold_whose_client_stays_runs_its_full_length(
    pair: tuple[socket.socket, socket.socket], autojump_clock: trio.testing.MockClock
) -> None:
    server, client = pair
    async with watching(client) as watch:
        due = trio.current_time() + HOLD_S
        assert not await watch.hold_until(due, server.fileno())
        assert trio.current_time() >= due and len(watch) == 0


@pytest.mark.parametrize("leaves_by", ["close", "reset"])
async def test_a_hold_ends_as_soon_as_its_client_has_gone(
    pair: tuple[socket.socket, socket.socket],
    autojump_clock: trio.testing.MockClock,
    leaves_by: str,
) -> None:
    # "reset": SO_LINGER 0, as a killed client's kernel does with unread data (and
    # bench_auth's flood at the end of a phase): an RST instead of a FIN.
    server, client = pair
    if leaves_by == "reset":
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    gone: list[bool] = []
    due = trio.current_time() + HOLD_S
    async with watching(client) as watch, trio.open_nursery() as holds:

        async def hold() -> None:
            gone.append(await watch.hold_until(due, server.fileno()))

        holds.start_soon(hold)
        await trio.testing.wait_all_tasks_blocked()
        assert len(watch) == 1
        client.close()  # behind the queued requests
        deadline = time.monotonic() + 30  # (real time: the FIN/RST is in at once on loopback)
        while not peer_closed(server) and time.monotonic() < deadline:
            time.sleep(0.001)
        await trio.testing.wait_all_tasks_blocked()  # the watcher has seen it, the hold ended
        # True: the watcher cancelled it (a hold that reached `due` returns False).
        assert gone == [True] and len(watch) == 0


async def test_without_a_usable_socket_a_hold_just_runs_its_length(
    autojump_clock: trio.testing.MockClock,
) -> None:
    watch = PeerWatch()  # (and without its task running)
    due = trio.current_time() + HOLD_S
    assert not await watch.hold_until(due, -1)
    assert trio.current_time() >= due
