"""Blocking client of the admin socket, for ``huselet ctl`` and scripts.

Plain :mod:`socket`, no Trio: the CLI is a short synchronous program and must
not pay for an event loop. Every failure becomes one typed error from
:mod:`huselet.admin.errors` whose message can be printed as is::

    with AdminClient(Path("/run/huselet/admin.sock")) as admin:
        status = admin.call("status")
        admin.call("scale", function="hello", instances=2)

A client keeps its connection between calls. It is not thread-safe: give each
thread its own.
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path
from typing import Any

from huselet.admin import MAX_REPLY_FRAME, MAX_REQUEST_FRAME
from huselet.admin.errors import (
    AdminCommandError,
    AdminForbidden,
    AdminProtocolError,
    AdminUnavailable,
)
from huselet.client.closing import Closing
from protocol.errors import FrameTooLarge, ProtocolError
from protocol.frames import FrameDecoder, encode_frame

RECEIVE_CHUNK = 65536


class AdminClient(Closing):
    def __init__(self, path: Path | str, timeout_s: float = 5.0) -> None:
        self.path = Path(path)
        self.timeout_s = timeout_s
        self._sock: socket.socket | None = None
        self._decoder = FrameDecoder(max_frame=MAX_REPLY_FRAME)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def call(self, cmd: str, **args: Any) -> Any:
        """Run ``cmd`` in the daemon and return its ``data``; raise an ``AdminError`` otherwise.

        ``timeout_s`` bounds the whole call: connecting, sending and waiting for the reply.
        """
        try:
            request = encode_frame({"cmd": cmd, "args": args}, max_frame=MAX_REQUEST_FRAME)
        except FrameTooLarge as exc:
            raise AdminCommandError("bad_request", f"request too large: {exc}") from None
        deadline = time.monotonic() + self.timeout_s
        sock = self._connection(deadline)
        try:
            reply = self._exchange(sock, request, deadline)
        except BaseException:
            # After a timeout or a broken stream we cannot know where the framing
            # stands; a later call must start on a fresh connection.
            self.close()
            raise
        return self._unwrap(reply)

    # --- connection -----------------------------------------------------------

    def _connection(self, deadline: float) -> socket.socket:
        if self._sock is not None and self._still_open(self._sock):
            return self._sock
        self.close()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(self._remaining(deadline, "connecting to"))
            sock.connect(os.fspath(self.path))
        except (FileNotFoundError, ConnectionRefusedError):
            sock.close()
            raise AdminUnavailable(
                f"huselet is not running at {self.path} (no daemon listens on that socket)"
            ) from None
        except PermissionError:
            sock.close()
            raise AdminForbidden(
                f"permission denied on {self.path}: run as root, as the daemon's user, "
                "or as a user listed in admin.allowed_uids"
            ) from None
        except TimeoutError:
            sock.close()
            raise AdminUnavailable(
                f"timed out after {self.timeout_s:g}s connecting to huselet at {self.path}"
            ) from None
        except OSError as exc:
            sock.close()
            raise AdminUnavailable(
                f"cannot connect to huselet at {self.path}: {exc.strerror or exc}"
            ) from None
        self._sock = sock
        self._decoder = FrameDecoder(max_frame=MAX_REPLY_FRAME)
        return sock

    @staticmethod
    def _still_open(sock: socket.socket) -> bool:
        """Whether a kept connection can take another request.

        The daemon closes idle connections. Between calls nothing may arrive, so
        pending bytes or EOF mean the daemon has hung up; checking *before*
        sending means a request is never sent twice.
        """
        try:
            # A socket with a timeout polls *before* recv(); make this a true peek.
            sock.settimeout(0)
            sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except BlockingIOError:
            return True  # quiet and open: the normal case
        except OSError:
            return False
        # EOF (b"") or unsolicited bytes (a goodbye frame): either way, hung up.
        return False

    def _remaining(self, deadline: float, doing: str) -> float:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AdminUnavailable(
                f"timed out after {self.timeout_s:g}s {doing} huselet at {self.path}"
            )
        return left

    # --- one request ------------------------------------------------------------

    def _exchange(self, sock: socket.socket, request: bytes, deadline: float) -> dict[str, Any]:
        try:
            sock.settimeout(self._remaining(deadline, "sending to"))
            sock.sendall(request)
        except (BrokenPipeError, ConnectionResetError):
            # The daemon may have refused us (forbidden, busy) and closed before
            # reading the request; its error frame can still be waiting for us.
            pass
        except TimeoutError:
            raise AdminUnavailable(
                f"timed out after {self.timeout_s:g}s sending to huselet at {self.path}"
            ) from None
        except OSError as exc:
            raise self._lost(exc) from None
        return self._receive(sock, deadline)

    def _receive(self, sock: socket.socket, deadline: float) -> dict[str, Any]:
        while True:
            try:
                msg = self._decoder.next_frame()
            except ProtocolError as exc:
                raise AdminProtocolError(
                    f"huselet at {self.path} sent an invalid reply: {exc}"
                ) from None
            if msg is not None:
                return msg
            try:
                sock.settimeout(self._remaining(deadline, "waiting for a reply from"))
                chunk = sock.recv(RECEIVE_CHUNK)
            except TimeoutError:
                raise AdminUnavailable(
                    f"timed out after {self.timeout_s:g}s waiting for a reply from huselet "
                    f"at {self.path}"
                ) from None
            except ConnectionResetError:
                # Linux reports a reset, not EOF, when the daemon closed with our
                # request unread; either way no reply is coming.
                chunk = b""
            except OSError as exc:
                raise self._lost(exc) from None
            if not chunk:
                raise AdminUnavailable(
                    f"huselet at {self.path} closed the connection without replying"
                )
            self._decoder.receive_data(chunk)

    def _lost(self, exc: OSError) -> AdminUnavailable:
        return AdminUnavailable(
            f"lost the connection to huselet at {self.path}: {exc.strerror or exc}"
        )

    def _unwrap(self, reply: dict[str, Any]) -> Any:
        ok = reply.get("ok")
        if ok is True:
            return reply.get("data")
        error = reply.get("error")
        if ok is not False or not isinstance(error, dict):
            self.close()
            raise AdminProtocolError(f"huselet at {self.path} sent a reply without ok/error")
        code = str(error.get("code") or "internal")
        message = str(error.get("message") or "no message")
        if code == "forbidden":
            self.close()  # the daemon has closed its end already
            raise AdminForbidden(f"huselet at {self.path} refused this user: {message}")
        if code == "busy":
            self.close()
            raise AdminUnavailable(f"huselet at {self.path} is busy: {message}; try again")
        if code in ("bad_frame", "frame_too_large"):
            self.close()
        raise AdminCommandError(code, message)
