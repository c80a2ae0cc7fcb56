"""PeerWatch: a held reply ends early only when its client has gone, on real sockets.

Trio's autojump clock stands in for the hold's minutes (a hold that runs its full
length takes no real time); the client's FIN is real.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest
import trio
import trio.testing

from huselet.gateway.linger import peer_closed
from huselet.gateway.peer_watch import PeerWatch

HOLD_S = 600.0


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    """(server end, client end) of one loopback TCP connection."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname())
        server, _ = listener.accept()
    with server, client:
        yield server, client


async def test_a_hold_whose_client_stays_runs_its_full_length(
    pair: tuple[socket.socket, socket.socket], autojump_clock: trio.testing.MockClock
) -> None:
    server, client = pair
    client.sendall(b"queued requests keep the socket readable")
    watch = PeerWatch()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(watch.run)
        due = trio.current_time() + HOLD_S
        assert not await watch.hold_until(due, server.fileno())
        assert trio.current_time() >= due and len(watch) == 0
        nursery.cancel_scope.cancel()


async def test_a_hold_ends_as_soon_as_its_client_has_gone(
    pair: tuple[socket.socket, socket.socket], autojump_clock: trio.testing.MockClock
) -> None:
    server, client = pair
    client.sendall(b"queued requests ahead of the FIN")
    watch = PeerWatch()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(watch.run)
        due = trio.current_time() + HOLD_S
        gone: list[bool] = []

        async def hold() -> None:
            gone.append(await watch.hold_until(due, server.fileno()))

        nursery.start_soon(hold)
        await trio.testing.wait_all_tasks_blocked()
        assert len(watch) == 1
        client.close()
        deadline = time.monotonic() + 30  # (real time: the FIN is in at once on loopback)
        while not peer_closed(server) and time.monotonic() < deadline:
            time.sleep(0.001)
        await trio.testing.wait_all_tasks_blocked()  # the watcher has seen it, the hold ended
        assert gone == [True] and trio.current_time() < due and len(watch) == 0
        nursery.cancel_scope.cancel()


async def test_without_a_usable_socket_a_hold_just_runs_its_length(
    autojump_clock: trio.testing.MockClock,
) -> None:
    watch = PeerWatch()  # (and without its task running)
    due = trio.current_time() + HOLD_S
    assert not await watch.hold_until(due, -1)
    assert trio.current_time() >= due
