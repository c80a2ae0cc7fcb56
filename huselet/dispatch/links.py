"""The instance link server: one Unix socket per function under ``run_dir/fn/``.

Instances connect as clients and must introduce themselves with the one-time
token they were started with. A wrong token, a malformed or late HELLO, or an
unknown instance is refused, logged and counted; it never reaches the pool.
After the handshake the connection is handed to the instance's lifecycle in
:mod:`huselet.dispatch.lifecycle`, which owns it from then on.
"""

from __future__ import annotations

import hmac
import os
import socket
import sys
from collections.abc import Callable
from contextlib import nullcontext
from functools import partial
from pathlib import Path
from typing import Any

import trio

from huselet.log import get_logger
from huselet.netio import FastSocket
from huselet.runtime.locallinks import offer_handshake, serve_locally, stop_serving
from protocol.errors import ProtocolError
from protocol.frames import FrameDecoder, encode_frame
from protocol.link import (
    HELLO,
    PROTO_VERSION,
    Hello,
    Refused,
    Welcome,
    message_type,
)

log = get_logger("link")

# A worker that connects by itself sends HELLO right after connect.
HELLO_TIMEOUT_S = 2.0
# A link the daemon dialled for a sandbox: HELLO comes once the worker behind
# it has started (bwrap, oci); the pool's start deadline bounds it as well.
DIALLED_HELLO_TIMEOUT_S = 30.0
HANDSHAKE_SLOTS_PER_FUNCTION = 64
RECEIVE_CHUNK = 262144


class InstanceLink:
    """An authenticated, framed connection to one instance (trio side)."""

    def __init__(self, stream: trio.SocketStream, decoder: FrameDecoder) -> None:
        self.stream = stream
        self.decoder = decoder
        self.max_frame = decoder.max_frame
        # Every request and result crosses here: no trio yield per system call.
        self._io = FastSocket(stream.socket)

    async def send(self, *messages: dict[str, Any]) -> None:
        await self._io.send_all(b"".join(self.frame(m) for m in messages))

    def frame(self, message: dict[str, Any]) -> bytes:
        """``message`` as a frame for this link (ProtocolError if too large)."""
        return encode_frame(message, max_frame=self.max_frame)

    async def send_frame(self, frame: bytes) -> None:
        """Write an encoded frame (or the rest of one), waiting for room."""
        await self._io.send_all(frame)

    def send_nowait_raw(self, frame: bytes) -> int:
        """Write what fits of ``frame`` now: the bytes written (OSError if broken)."""
        return self._io.send_nowait(frame)

    def send_nowait(self, message: dict[str, Any]) -> bool:
        """Write one small frame now, without waiting; False if the socket had no
        room for all of it (the peer is not reading; part may be on the wire).

        For the heartbeat only, which writes only while the instance is idle, so
        it never interleaves with a request frame being sent.
        """
        data = encode_frame(message, max_frame=self.max_frame)
        return self._io.send_nowait(data) == len(data)

    async def receive(self) -> dict[str, Any] | None:
        """The next message, or None once the instance closed its end."""
        msg = self.decoder.next_frame()
        if msg is not None:
            return msg
        return await self.receive_more()

    async def receive_more(self) -> dict[str, Any] | None:
        """:meth:`receive` for a caller whose ``decoder.next_frame()`` just returned
        None: it reads at once (the serving reader asks the decoder itself first,
        and a second look at the same bytes would cost a frame parse per read)."""
        decoder = self.decoder
        while True:
            # Nothing half-received: the instance speaks only after being spoken
            # to, so a read now would almost always fail (EAGAIN); wait first.
            chunk = await self._io.receive_some(RECEIVE_CHUNK, expect_wait=decoder.buffered == 0)
            if not chunk:
                return None
            decoder.receive_data(chunk)
            msg = decoder.next_frame()
            if msg is not None:
                return msg

    async def aclose(self) -> None:
        await trio.aclose_forcefully(self.stream)


# Given (function, instance_id, token) return a callback that takes the link,
# or None when no such instance is waiting for it.
LinkClaim = Callable[[str, str, str], Callable[[InstanceLink], bool] | None]


class LinkServer:
    def __init__(self, run_dir: Path, claim: LinkClaim, *, max_frame: int) -> None:
        self.socket_dir = run_dir / "fn"
        self.claim = claim
        self.max_frame = max_frame
        self._nursery: trio.Nursery | None = None
        self.refused = 0
        self.served: set[str] = set()  # functions whose socket is listening

    @property
    def running(self) -> bool:
        return self._nursery is not None

    def socket_path(self, function: str) -> Path:
        return self.socket_dir / f"{function}.sock"

    async def run(
        self, functions: list[str], *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        self.socket_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.socket_dir, 0o700)
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                for name in functions:
                    await nursery.start(self._serve_function, name)
                task_status.started()
                await trio.sleep_forever()
        finally:
            self._nursery = None

    async def add_function(self, name: str) -> None:
        """Open the socket of a function added after start (reload, deploy); idempotent."""
        assert self._nursery is not None
        if name not in self.served:
            await self._nursery.start(self._serve_function, name)

    async def _serve_function(
        self, name: str, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        path = self.socket_path(name)
        sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            path.unlink(missing_ok=True)  # a stale socket from a previous run
            await sock.bind(str(path))
            os.chmod(path, 0o600)
            # Bursts of fork starts connect hundreds of instances at once.
            sock.listen(1024)
            listener = trio.SocketListener(sock)
        except BaseException:
            sock.close()
            raise
        task_status.started()
        self.served.add(name)
        # This function's own slots: a slot is taken before accept, so what
        # waits beyond them waits in this socket's backlog, nowhere else.
        slots = trio.Semaphore(HANDSHAKE_SLOTS_PER_FUNCTION)
        take: Callable[[socket.socket], None] | None = None
        try:
            async with trio.open_nursery() as nursery:

                def hand_in(sock: socket.socket) -> None:
                    # A link this process dialled for one of its sandboxes (a socket
                    # pair, see locallinks): no accept, no slot (the pool bounds its
                    # starts under way), and HELLO gets the dialled links' deadline.
                    stream = trio.SocketStream(trio.socket.from_stdlib_socket(sock))
                    # The dialling start runs it in its own task if it asked to,
                    # within the start's deadline (no HELLO timeout of its own).
                    handshake = partial(self._handshake, name, stream, None, None)
                    if not offer_handshake(handshake, stream.socket.close):
                        timeout = DIALLED_HELLO_TIMEOUT_S
                        nursery.start_soon(self._handshake, name, stream, None, timeout)

                take = hand_in
                serve_locally(path, take)
                while True:
                    await slots.acquire()
                    try:
                        stream = await listener.accept()
                    except BaseException:
                        slots.release()
                        raise
                    timeout = _hello_timeout(stream)
                    nursery.start_soon(self._handshake, name, stream, slots, timeout)
        finally:
            if take is not None:
                stop_serving(path, take)
            self.served.discard(name)
            sock.close()
            path.unlink(missing_ok=True)

    async def _handshake(
        self,
        function: str,
        stream: trio.SocketStream,
        slots: trio.Semaphore | None,
        hello_timeout: float | None,
    ) -> None:
        """Authenticate one link; ``hello_timeout`` None: the caller's deadline bounds it."""
        handed_over = False
        try:
            handed_over = await self._authenticate(function, stream, hello_timeout)
        except Exception:
            # One bad connection (or a bug) must not stop the function's socket.
            log.exception("instance link handshake failed", function=function)
        finally:
            if slots is not None:
                slots.release()
            if not handed_over:
                await trio.aclose_forcefully(stream)

    async def _refuse(
        self,
        stream: trio.SocketStream,
        function: str,
        code: str,
        why: str,
        *,
        answer: bool = True,
        **fields: Any,
    ) -> bool:
        self.refused += 1
        log.warning("instance link refused", function=function, reason=why, **fields)
        if not answer:
            return False
        with trio.move_on_after(1):
            try:
                await stream.send_all(encode_frame(Refused(code, why).encode()))
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass
        return False

    async def _authenticate(
        self, function: str, stream: trio.SocketStream, hello_timeout: float | None
    ) -> bool:
        decoder = FrameDecoder(max_frame=min(self.max_frame, 64 * 1024))
        link = InstanceLink(stream, decoder)
        try:
            with trio.fail_after(hello_timeout) if hello_timeout is not None else nullcontext():
                msg = await link.receive()
        except trio.TooSlowError:
            return await self._refuse(
                stream, function, "timeout", "no hello within the handshake timeout"
            )
        except ProtocolError as exc:
            return await self._refuse(stream, function, "malformed", str(exc))
        except (trio.BrokenResourceError, OSError):
            return False
        if msg is None:
            return False
        try:
            if message_type(msg) != HELLO:
                return await self._refuse(
                    stream, function, "malformed", "first frame must be hello"
                )
            hello = Hello.decode(msg)
        except ProtocolError as exc:
            return await self._refuse(stream, function, "malformed", str(exc))
        if hello.proto != PROTO_VERSION:
            return await self._refuse(
                stream,
                function,
                "version",
                f"unsupported link protocol {hello.proto}; daemon speaks {PROTO_VERSION}",
            )
        accept = self.claim(function, hello.instance_id, hello.token)
        if accept is None:
            # Nothing but a close: the peer learns nothing (not even whether
            # the id, the token or its freshness was wrong).
            return await self._refuse(
                stream,
                function,
                "unauthorized",
                "unknown instance, wrong or used token",
                answer=False,
                instance=hello.instance_id[:64],
                peer_pid=hello.pid,
            )
        decoder.max_frame = self.max_frame
        link.max_frame = self.max_frame
        try:
            await link.send(Welcome(PROTO_VERSION, function, self.max_frame).encode())
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return False
        return accept(link)


def _hello_timeout(stream: trio.SocketStream) -> float:
    """The HELLO deadline of a peer: long for links the daemon dialled itself."""
    try:
        creds = stream.socket.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12)
    except OSError:
        return HELLO_TIMEOUT_S
    pid = int.from_bytes(creds[:4], sys.byteorder, signed=True)
    return DIALLED_HELLO_TIMEOUT_S if pid == os.getpid() else HELLO_TIMEOUT_S


def token_matches(expected: str, given: str) -> bool:
    return hmac.compare_digest(expected.encode(), given.encode())
