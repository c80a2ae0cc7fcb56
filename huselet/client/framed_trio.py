"""A trio client of the framed ingress: many tasks call over one connection.

    async with open_framed_client("127.0.0.1:8471", token=token) as client:  # or key=AccessKey
        async with trio.open_nursery() as nursery:
            for _ in range(100):
                nursery.start_soon(client.call, "hello", b"{}", "json")

A task that calls while ``max_inflight`` calls are unanswered waits for a slot;
replies are matched to their callers by id, in whatever order they complete.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Unpack

import trio

from huselet.client.framed import (
    RECEIVE_BYTES,
    CallOptions,
    FramedError,
    check_welcome,
    frame_call,
    parse_address,
)
from huselet.client.signing import AccessKey
from protocol.ingress import GoAway, IngressProtocolError, Pong, Reply
from protocol.ingress_client import ClientConnection


class TrioFramedClient:
    def __init__(
        self, stream: trio.abc.Stream, conn: ClientConnection, key: AccessKey | None = None
    ) -> None:
        self._stream = stream
        self._conn = conn
        self._key = key  # signs every call when set (a node with tenants)
        self._waiting: dict[int, trio.MemorySendChannel[Reply]] = {}
        # Set when a reply frees a slot. Slots are the connection's own count of
        # unanswered calls: a call abandoned by its task still holds one until
        # its reply arrives, so the node's max_inflight is never exceeded.
        self._slot_freed = trio.Event()
        self._send_lock = trio.Lock()
        self._broken: FramedError | None = None

    async def call(
        self, fn: str, event: bytes, kind: str = "bytes", **options: Unpack[CallOptions]
    ) -> Reply:
        """One call, and its reply (waiting for a slot while max_inflight are unanswered)."""
        while not self._conn.can_call:
            if self._broken is not None:
                raise self._broken
            self._slot_freed = trio.Event()
            await self._slot_freed.wait()
        if self._broken is not None:
            raise self._broken
        call_id, frame = frame_call(self._conn, self._key, fn, event, kind, options)
        send, receive = trio.open_memory_channel[Reply](1)
        self._waiting[call_id] = send
        try:
            async with self._send_lock:
                await self._stream.send_all(frame)
            async with receive:
                try:
                    return await receive.receive()
                except trio.EndOfChannel:
                    raise self._broken or FramedError("connection closed") from None
        finally:
            self._waiting.pop(call_id, None)

    async def _read_replies(self) -> None:
        try:
            while True:
                event = self._conn.next_event()
                if event is None:
                    data = await self._stream.receive_some(RECEIVE_BYTES)
                    if not data:
                        raise FramedError("the node closed the connection")
                    self._conn.receive_data(data)
                    continue
                if isinstance(event, Reply):
                    waiter = self._waiting.get(event.id)
                    if waiter is not None:
                        waiter.send_nowait(event)
                    self._slot_freed.set()
                elif not isinstance(event, GoAway | Pong):
                    raise FramedError(f"unexpected {type(event).__name__} from the node")
        except (IngressProtocolError, FramedError, trio.BrokenResourceError, OSError) as exc:
            self._broken = exc if isinstance(exc, FramedError) else FramedError(str(exc))
            for waiter in self._waiting.values():
                waiter.close()
            self._slot_freed.set()


async def _connect_stream(address: str | Path) -> trio.abc.Stream:
    family, sockaddr = parse_address(address)
    if family == socket.AF_UNIX:
        assert isinstance(sockaddr, str)
        return await trio.open_unix_socket(sockaddr)
    assert isinstance(sockaddr, tuple)
    return await trio.open_tcp_stream(sockaddr[0], sockaddr[1])


@asynccontextmanager
async def open_framed_client(
    address: str | Path,
    *,
    token: str | None = None,
    key: AccessKey | None = None,
    connect_timeout_s: float = 10.0,
) -> AsyncIterator[TrioFramedClient]:
    """A connected, welcomed client; ``key`` signs every call (a node with tenants)."""
    with trio.fail_after(connect_timeout_s):
        stream = await _connect_stream(address)
        conn = ClientConnection(token=token)
        try:
            await stream.send_all(conn.hello())
            first = None
            while first is None:
                first = conn.next_event()
                if first is None:
                    data = await stream.receive_some(RECEIVE_BYTES)
                    if not data:
                        raise FramedError("the node closed the connection")
                    conn.receive_data(data)
        except BaseException:
            await trio.aclose_forcefully(stream)
            raise
    try:
        check_welcome(first)
    except FramedError:
        await trio.aclose_forcefully(stream)
        raise
    client = TrioFramedClient(stream, conn, key)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client._read_replies)
            try:
                yield client
            finally:
                nursery.cancel_scope.cancel()
    finally:
        await trio.aclose_forcefully(stream)
