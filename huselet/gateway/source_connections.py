"""Open connections per source address, so one client cannot hold every slot.

``gateway.max_connections`` bounds an ingress's connections, but not who holds
them: one client (a flood, or a retry loop that the tarpit of
:mod:`huselet.gateway.admission_throttle` holds at 429 for seconds per
connection) could open them all and leave nothing for anyone else. With
``gateway.max_connections_per_source`` set, a source address beyond its share
is answered at once (HTTP: 429 with ``Retry-After``; framed: closed before
HELLO) and its other connections are left alone.

A source is what the per-source rate limits count too
(:func:`huselet.tenants.sources.source_key`: an IPv4 address or an IPv6 /64).
Unix socket peers (``""``) are the daemon's own user: never capped. The table holds
only sources with a connection open, so it is bounded by the open connections.
"""

from __future__ import annotations

import socket

import trio

from huselet.tenants.sources import source_key


def source_of(stream: trio.abc.Stream) -> str:
    """The TCP peer's IP address; "" for a Unix socket (the daemon's own user).

    The address itself (CIDR lists match it); :class:`SourceConnections` keys it.
    """
    if not isinstance(stream, trio.SocketStream) or stream.socket.family == socket.AF_UNIX:
        return ""
    try:
        return str(stream.socket.getpeername()[0])
    except OSError:
        return "?"  # reset already; refused by any source list, matched by none


class SourceConnections:
    """How many connections each source has open; ``cap`` 0: no per-source bound."""

    __slots__ = ("_open", "cap", "refused")

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self._open: dict[str, int] = {}
        self.refused = 0  # connections refused for their source's share, ever

    def try_open(self, source: str) -> bool:
        """Count a new connection from ``source``; False (not counted) if over its cap."""
        if not self.cap or not source:
            return True
        source = source_key(source)
        held = self._open.get(source, 0)
        if held >= self.cap:
            self.refused += 1
            return False
        self._open[source] = held + 1
        return True

    def close(self, source: str) -> None:
        """A connection :meth:`try_open` counted has ended."""
        if not self.cap or not source:
            return
        source = source_key(source)
        held = self._open.get(source, 0) - 1
        if held > 0:
            self._open[source] = held
        else:
            self._open.pop(source, None)

    def held(self, source: str) -> int:
        return self._open.get(source_key(source), 0)
