"""Whether a client has closed its end (``peer_closed``), on real TCP sockets: what a
held connection asks before it admits the next request its client queued."""

from __future__ import annotations

import select
import socket
import struct

from huselet.gateway.linger import peer_closed


def wait_readable(sock: socket.socket) -> None:
    # The FIN or RST is in once the socket polls readable (loopback: at once; bounded anyway).
    assert select.select([sock], [], [], 30)[0]


def test_an_open_connection_with_requests_queued_is_not_closed(
    pair: tuple[socket.socket, ...],
) -> None:
    server, client = pair
    assert not peer_closed(server)
    client.sendall(b"GET / HTTP/1.1\r\n\r\n" * 10)
    wait_readable(server)
    assert not peer_closed(server)


def test_a_client_that_closed_behind_its_queued_requests_is_seen_as_gone(
    pair: tuple[socket.socket, ...],
) -> None:
    server, client = pair
    client.sendall(b"GET / HTTP/1.1\r\n\r\n" * 10)
    client.close()
    wait_readable(server)
    # A peeking read would still return the queued requests; the FIN is behind them.
    assert server.recv(8, socket.MSG_PEEK) == b"GET / HT"
    assert peer_closed(server)


def test_a_client_that_reset_the_connection_is_seen_as_gone(
    pair: tuple[socket.socket, ...],
) -> None:
    server, client = pair
    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    client.close()  # linger 0: RST
    wait_readable(server)
    assert peer_closed(server)


def test_a_socket_without_a_descriptor_counts_as_gone(pair: tuple[socket.socket, ...]) -> None:
    server, _ = pair
    server.close()
    assert peer_closed(server)
