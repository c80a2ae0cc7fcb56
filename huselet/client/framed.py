"""A blocking client of the framed ingress (``protocol/FRAMED.md``): stdlib + msgpack.

    with FramedClient.connect("127.0.0.1:8471", token=token) as client:
        reply = client.call("hello", b'{"name": "ops"}', kind="json")
        replies = client.call_many([("hello", b"{}", "json")] * 1000)  # pipelined

:meth:`FramedClient.call_many` keeps up to the node's ``max_inflight`` calls
on the wire at once and returns the replies in the order of the calls. With
``key=`` (an :class:`~huselet.client.signing.AccessKey`) every call is signed
(``protocol/ingress_signing.py``), as a node with tenants requires.
"""

from __future__ import annotations

import secrets
import socket
import time
from collections.abc import Iterable
from pathlib import Path
from typing import TypedDict, Unpack

from huselet.client.closing import Closing
from huselet.client.signing import AccessKey, format_timestamp
from protocol.ingress import GoAway, IngressProtocolError, Pong, Refused, Reply, Welcome
from protocol.ingress_client import ClientConnection
from protocol.ingress_signing import CallAuth, sign_call

# Under glibc's 128 KiB mmap threshold: a recv() allocates its whole size first,
# and at 256 KiB that was an mmap and an munmap per read (~15 µs).
RECEIVE_BYTES = 64 * 1024


class FramedError(Exception):
    """The node refused the connection, broke the protocol or went away."""


def parse_address(address: str | Path) -> tuple[int, str | tuple[str, int]]:
    """``host:port``, ``[v6]:port`` or a Unix socket path → (family, sockaddr)."""
    text = str(address)
    if isinstance(address, Path) or text.startswith(("/", ".")):
        return socket.AF_UNIX, text
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"{text!r} is neither host:port nor a socket path")
    host = host.strip("[]")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return family, (host, int(port))


class CallOptions(TypedDict, total=False):
    """A call's optional fields (both clients' ``call(..., **options)``)."""

    timeout_ms: int | None  # shortens the function's deadline, never lengthens it
    request_id: str | None  # [A-Za-z0-9._-]{1,64}; the node makes one otherwise
    # A call signed elsewhere (the original caller, a gateway forwarding it), sent
    # as is: its fields must be the ones it was signed for. Overrides ``key``.
    auth: CallAuth | None


def check_welcome(first: object) -> None:
    """Raise FramedError unless the node's first frame is WELCOME."""
    if isinstance(first, Refused):
        raise FramedError(f"refused: {first.code}: {first.message}")
    if not isinstance(first, Welcome):
        raise FramedError(f"expected welcome, got {type(first).__name__}")


def frame_call(
    conn: ClientConnection,
    key: AccessKey | None,
    fn: str,
    event: bytes,
    kind: str,
    options: CallOptions,
) -> tuple[int, bytes]:
    """Number, sign (when ``key`` is given: now, with a fresh nonce) and encode one call."""
    timeout_ms = options.get("timeout_ms")
    request_id = options.get("request_id")
    auth = options.get("auth")
    if auth is None and key is not None:
        auth = sign_call(
            key.key_id,
            key.secret,
            fn,
            event,
            kind,
            timeout_ms,
            date=format_timestamp(time.time()),
            nonce=secrets.token_hex(8),
        )
    return conn.call(fn, event, kind, timeout_ms=timeout_ms, request_id=request_id, auth=auth)


class FramedClient(Closing):
    def __init__(
        self, sock: socket.socket, conn: ClientConnection, key: AccessKey | None = None
    ) -> None:
        self._sock = sock
        self._conn = conn
        self._key = key
        self._replies: dict[int, Reply] = {}

    @classmethod
    def connect(
        cls,
        address: str | Path,
        *,
        token: str | None = None,
        key: AccessKey | None = None,
        timeout: float = 30.0,
    ) -> FramedClient:
        family, sockaddr = parse_address(address)
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(sockaddr)
            if family != socket.AF_UNIX:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn = ClientConnection(token=token)
            sock.sendall(conn.hello())
            client = cls(sock, conn, key)
            check_welcome(client._next_event())
            return client
        except BaseException:
            sock.close()
            raise

    @property
    def max_inflight(self) -> int:
        return self._conn.max_inflight

    def call(
        self, fn: str, event: bytes, kind: str = "bytes", **options: Unpack[CallOptions]
    ) -> Reply:
        """One call, and its reply."""
        call_id, frame = frame_call(self._conn, self._key, fn, event, kind, options)
        self._sock.sendall(frame)
        return self._wait(call_id)

    def call_many(
        self, calls: Iterable[tuple[str, bytes, str]], *, timeout_ms: int | None = None
    ) -> list[Reply]:
        """Pipeline ``(fn, event, kind)`` calls; replies in the order of ``calls``."""
        ids: list[int] = []
        pending = iter(calls)
        exhausted = False
        while True:
            batch = []
            while not exhausted and self._conn.can_call:
                try:
                    fn, event, kind = next(pending)
                except StopIteration:
                    exhausted = True
                    break
                call_id, frame = frame_call(
                    self._conn, self._key, fn, event, kind, {"timeout_ms": timeout_ms}
                )
                ids.append(call_id)
                batch.append(frame)
            if batch:
                self._sock.sendall(b"".join(batch))
            if exhausted and not self._conn.inflight:
                break
            self._collect_one()
        return [self._replies.pop(call_id) for call_id in ids]

    def _wait(self, call_id: int) -> Reply:
        while call_id not in self._replies:
            self._collect_one()
        return self._replies.pop(call_id)

    def _collect_one(self) -> None:
        event = self._next_event()
        if isinstance(event, Reply):
            self._replies[event.id] = event
        elif isinstance(event, GoAway | Pong):
            pass  # GoAway: calls in flight are still answered; the caller sees 503s after
        else:
            raise FramedError(f"unexpected {type(event).__name__} from the node")

    def _next_event(self) -> Welcome | Refused | Reply | GoAway | Pong:
        while True:
            try:
                event = self._conn.next_event()
            except IngressProtocolError as exc:
                raise FramedError(str(exc)) from None
            if event is not None:
                return event
            data = self._sock.recv(RECEIVE_BYTES)
            if not data:
                raise FramedError("the node closed the connection")
            self._conn.receive_data(data)

    def close(self) -> None:
        self._sock.close()
