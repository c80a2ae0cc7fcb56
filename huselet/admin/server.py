"""The admin socket: how ``huselet ctl`` (and only local, trusted users) talk to the daemon.

A Unix stream socket at ``admin.socket``, mode 0600, speaking the frames of
:mod:`protocol.frames`. Each request is ``{"cmd": str, "args": {...}}``; each
reply is ``{"ok": true, "data": ...}`` or
``{"ok": false, "error": {"code": str, "message": str}}``. A connection may
carry several requests, answered in order.

Commands are not defined here: the daemon registers them
(``server.register("status", scheduler_status)``), so this module knows
nothing about scheduling and stays testable on its own.

Trust comes from two independent checks: file permissions keep other users from
connecting at all, and ``SO_PEERCRED`` — the kernel's word on who is on the
other end, which a client cannot forge — refuses anyone but root, the daemon's
own user and ``admin.allowed_uids`` even if the permissions are loosened.
"""

from __future__ import annotations

import errno
import inspect
import os
import socket
import stat
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from huselet.admin import MAX_REPLY_FRAME, MAX_REQUEST_FRAME
from huselet.admin.errors import AdminError, AdminSocketInUse
from huselet.config import AdminSettings
from huselet.errors import HuseletError
from huselet.log import get_logger
from protocol.errors import FrameTooLarge, ProtocolError
from protocol.frames import FrameDecoder, encode_frame

log = get_logger("admin")

MAX_CONNECTIONS = 32
# Time a connection may take to deliver its next complete request, and to take
# in a reply. Handler run time is not counted: a command such as "drain" may
# legitimately take longer.
IDLE_TIMEOUT_S = 10.0
# How long the start-up probe of an existing socket waits for a listener.
PROBE_TIMEOUT_S = 2.0
# Error frames sent just before dropping a peer are a few dozen bytes on a fresh
# or idle connection, so they go out at once; the bound only guards the absurd.
GOODBYE_TIMEOUT_S = 0.5
LISTEN_BACKLOG = 64
RECEIVE_CHUNK = 65536
# struct ucred {pid_t pid; uid_t uid; gid_t gid;} — three 32-bit ints on Linux.
_UCRED = struct.Struct("3i")
# accept() failures caused by resource exhaustion: back off and keep serving
# rather than letting a burst of file descriptors kill the admin interface.
_ACCEPT_RESOURCE_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
_ACCEPT_BACKOFF_S = 0.1

Handler = Callable[[dict[str, Any]], Awaitable[Any]] | Callable[[dict[str, Any]], Any]


@dataclass(frozen=True, slots=True)
class PeerCredentials:
    """Who the kernel says is on the other end of a Unix socket."""

    pid: int
    uid: int
    gid: int


def peer_credentials(sock: trio.socket.SocketType) -> PeerCredentials:
    """Read ``SO_PEERCRED``; these are the peer's ids at ``connect()`` time."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    pid, uid, gid = _UCRED.unpack(raw)
    return PeerCredentials(pid, uid, gid)


def error_reply(code: str, message: str) -> dict[str, Any]:
    return {"ok": False, "error": {"code": code, "message": message}}


def _short(text: str, limit: int = 64) -> str:
    """A peer-chosen string made safe to echo in a message or a log line."""
    return repr(text if len(text) <= limit else text[:limit] + "…")


class AdminServer:
    """Serves registered commands on the admin socket until cancelled."""

    def __init__(
        self,
        settings: AdminSettings,
        *,
        max_connections: int = MAX_CONNECTIONS,
        idle_timeout_s: float = IDLE_TIMEOUT_S,
        max_frame: int = MAX_REQUEST_FRAME,
    ) -> None:
        if not hasattr(socket, "SO_PEERCRED"):
            # Without peer credentials the only guard left would be file modes;
            # refuse to start rather than silently serve with half the checks.
            raise AdminError("this platform has no SO_PEERCRED; the admin socket needs Linux")
        self.path = Path(settings.socket)
        self.allowed_uids = frozenset({0, os.geteuid(), *settings.allowed_uids})
        self.max_connections = max_connections
        self.idle_timeout_s = idle_timeout_s
        self.max_frame = max_frame
        self._handlers: dict[str, Handler] = {}
        # A Semaphore, not a CapacityLimiter: the accept loop acquires a slot
        # and the connection's own task releases it.
        self._slots = trio.Semaphore(max_connections)
        self.forbidden = 0  # peers refused by SO_PEERCRED, for status and tests
        self.busy = 0  # connections turned away because all slots were taken

    # --- commands ---------------------------------------------------------------

    def register(self, name: str, handler: Handler) -> None:
        """Make ``name`` callable; ``handler(args)`` may be a plain or an async function."""
        if not isinstance(name, str) or not name:
            raise ValueError("an admin command needs a non-empty string name")
        if name in self._handlers:
            # Two subsystems claiming one name is a wiring bug; fail at start, loudly.
            raise ValueError(f"admin command {name!r} is already registered")
        self._handlers[name] = handler

    @property
    def commands(self) -> list[str]:
        return sorted(self._handlers)

    @property
    def active_connections(self) -> int:
        """Connections being served right now (refused ones never count)."""
        return self.max_connections - self._slots.value

    # --- lifecycle --------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Listen, serve until cancelled, then close and remove the socket."""
        self._ensure_parent_dir()
        await self._clear_stale_socket()
        sock, identity = self._bind()
        try:
            listener = trio.SocketListener(trio.socket.from_stdlib_socket(sock))
            log.info("admin socket listening", path=str(self.path))
            async with trio.open_nursery() as nursery:
                task_status.started()
                await self._accept_loop(listener, nursery)
        finally:
            self._unlink_if_ours(identity)
            sock.close()

    def _ensure_parent_dir(self) -> None:
        parent = self.path.parent
        try:
            parent.mkdir(mode=0o700, parents=True)
        except FileExistsError:
            # An existing directory (/run/huselet, $XDG_RUNTIME_DIR...) belongs to
            # whoever set it up; its mode is theirs to choose, not ours to change.
            return
        # mkdir's mode is filtered by the umask; make the new directory exactly 0700.
        os.chmod(parent, 0o700)

    async def _clear_stale_socket(self) -> None:
        """Remove a socket left by a dead daemon; refuse to steal a live one."""
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(st.st_mode):
            # Never unlink a regular file or a symlink someone put there: a typo'd
            # admin.socket must not delete data.
            raise AdminError(f"{self.path} exists and is not a socket; refusing to replace it")
        probe = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        with probe:
            try:
                with trio.move_on_after(PROBE_TIMEOUT_S):
                    await probe.connect(str(self.path))
            except (ConnectionRefusedError, FileNotFoundError):
                pass  # nobody listens: the previous daemon died without cleaning up
            except OSError as exc:
                raise AdminError(
                    f"cannot tell whether {self.path} is in use: {exc.strerror or exc}"
                ) from None
            else:
                # Connected, or the probe timed out on a full backlog: both mean a
                # live process is listening there.
                raise AdminSocketInUse(
                    f"another huselet is already running with its admin socket at {self.path}"
                )
        self.path.unlink(missing_ok=True)

    def _bind(self) -> tuple[socket.socket, tuple[int, int]]:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            # bind() creates the socket file with 0777 & ~umask. It is made 0600
            # below, before listen(): until then a connect() is refused, so the
            # wider mode is never usable. (Not a narrowed umask around bind: the
            # umask is process-wide, and a file another thread created meanwhile,
            # such as a downloaded code image, would get the narrow mode too.)
            sock.bind(str(self.path))
        except OSError as exc:
            sock.close()
            if exc.errno == errno.EADDRINUSE:
                # Another daemon bound it between our probe and our bind.
                raise AdminSocketInUse(
                    f"another huselet is already running with its admin socket at {self.path}"
                ) from None
            raise AdminError(
                f"cannot create the admin socket {self.path}: {exc.strerror}"
            ) from None
        try:
            os.chmod(self.path, 0o600)
            st = os.lstat(self.path)
            sock.listen(LISTEN_BACKLOG)
            sock.setblocking(False)
        except BaseException:
            sock.close()
            self.path.unlink(missing_ok=True)
            raise
        # Remember which file is ours so shutdown never removes a successor's socket.
        return sock, (st.st_dev, st.st_ino)

    def _unlink_if_ours(self, identity: tuple[int, int]) -> None:
        try:
            st = os.lstat(self.path)
            if (st.st_dev, st.st_ino) == identity:
                os.unlink(self.path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("cannot remove the admin socket", path=str(self.path), error=exc.strerror)

    # --- connections ------------------------------------------------------------

    async def _accept_loop(self, listener: trio.SocketListener, nursery: trio.Nursery) -> None:
        while True:
            try:
                stream = await listener.accept()
            except OSError as exc:
                if exc.errno not in _ACCEPT_RESOURCE_ERRNOS:
                    raise
                log.warning("admin accept failed; backing off", error=os.strerror(exc.errno or 0))
                await trio.sleep(_ACCEPT_BACKOFF_S)
                continue
            # Check the peer before it may take a slot: strangers never occupy
            # capacity, and never learn anything beyond "forbidden".
            peer = self._authorise(stream)
            if peer is None:
                await self._goodbye(stream, "forbidden", "this user may not use the admin socket")
                continue
            try:
                self._slots.acquire_nowait()
            except trio.WouldBlock:
                # Answer at once instead of leaving the client hanging in the backlog.
                self.busy += 1
                log.warning(
                    "admin connection turned away: all slots busy",
                    peer_pid=peer.pid,
                    peer_uid=peer.uid,
                )
                await self._goodbye(
                    stream, "busy", f"too many admin connections (at most {self.max_connections})"
                )
                continue
            nursery.start_soon(self._serve_connection, stream, peer)

    def _authorise(self, stream: trio.SocketStream) -> PeerCredentials | None:
        try:
            peer = peer_credentials(stream.socket)
        except OSError as exc:
            # Fail closed: a peer we cannot identify is a peer we do not trust.
            self.forbidden += 1
            log.warning("admin connection refused: no peer credentials", error=exc.strerror)
            return None
        if peer.uid in self.allowed_uids:
            return peer
        self.forbidden += 1
        log.warning(
            "admin connection refused: uid not allowed",
            peer_pid=peer.pid,
            peer_uid=peer.uid,
            peer_gid=peer.gid,
        )
        return None

    async def _goodbye(self, stream: trio.SocketStream, code: str, message: str) -> None:
        """Send one error frame, best effort, and close."""
        with trio.move_on_after(GOODBYE_TIMEOUT_S):
            try:
                await stream.send_all(encode_frame(error_reply(code, message)))
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                pass  # the peer is already gone; nothing to tell it
        await trio.aclose_forcefully(stream)

    async def _serve_connection(self, stream: trio.SocketStream, peer: PeerCredentials) -> None:
        try:
            await self._converse(stream, peer)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            # A client that hangs up mid-reply is routine (Ctrl-C on the CLI).
            log.debug("admin connection lost", peer_pid=peer.pid, error=str(exc))
        except Exception:
            # A bug in serving one connection must not take the admin socket down
            # with it (the nursery would re-raise): drop the connection, keep the trace.
            log.exception("admin connection failed", peer_pid=peer.pid)
        finally:
            self._slots.release()
            await trio.aclose_forcefully(stream)

    async def _converse(self, stream: trio.SocketStream, peer: PeerCredentials) -> None:
        decoder = FrameDecoder(max_frame=self.max_frame)
        while True:
            try:
                with trio.fail_after(self.idle_timeout_s):
                    request = await self._receive(stream, decoder)
            except trio.TooSlowError:
                log.debug("admin connection idle; closing", peer_pid=peer.pid)
                return
            except FrameTooLarge as exc:
                log.warning("admin request too large", peer_pid=peer.pid, error=str(exc))
                await self._goodbye(stream, "frame_too_large", str(exc))
                return
            except ProtocolError as exc:
                # The framing can no longer be trusted; this connection is done.
                log.warning("malformed admin request", peer_pid=peer.pid, error=str(exc))
                await self._goodbye(stream, "bad_frame", str(exc))
                return
            if request is None:
                return  # the client closed its end
            reply = await self._dispatch(request, peer)
            # A client that sends but never reads would block us here for good,
            # holding its slot; it gets the same patience as an idle one.
            with trio.move_on_after(self.idle_timeout_s) as send_scope:
                await stream.send_all(self._encode_reply(reply))
            if send_scope.cancelled_caught:
                log.warning("admin client does not read its replies; closing", peer_pid=peer.pid)
                return

    @staticmethod
    async def _receive(stream: trio.SocketStream, decoder: FrameDecoder) -> dict[str, Any] | None:
        while True:
            msg = decoder.next_frame()
            if msg is not None:
                return msg
            chunk = await stream.receive_some(RECEIVE_CHUNK)
            if not chunk:
                return None
            decoder.receive_data(chunk)

    async def _dispatch(self, request: dict[str, Any], peer: PeerCredentials) -> dict[str, Any]:
        cmd = request.get("cmd")
        if not isinstance(cmd, str):
            return error_reply("bad_request", "a request needs a string 'cmd'")
        args = request.get("args")
        if args is None:
            args = {}
        elif not isinstance(args, dict) or not all(isinstance(k, str) for k in args):
            return error_reply("bad_request", "'args' must be a map with string keys")
        handler = self._handlers.get(cmd)
        if handler is None:
            known = ", ".join(self.commands) or "none"
            return error_reply("unknown_command", f"unknown command {_short(cmd)}; known: {known}")
        log.debug("admin command", cmd=cmd, peer_pid=peer.pid, peer_uid=peer.uid)
        try:
            result = handler(args)
            if inspect.isawaitable(result):
                result = await result
        except HuseletError as exc:
            return error_reply(exc.code, exc.message)
        except Exception:
            # Cancellation is a BaseException and passes through untouched. The
            # traceback stays in the daemon's log: it may name host paths.
            log.exception("admin command failed", cmd=cmd, peer_pid=peer.pid)
            return error_reply(
                "internal", f"command {_short(cmd)} failed inside the daemon; see its log"
            )
        return {"ok": True, "data": result}

    @staticmethod
    def _encode_reply(reply: dict[str, Any]) -> bytes:
        try:
            return encode_frame(reply, max_frame=MAX_REPLY_FRAME)
        except FrameTooLarge as exc:
            log.error("admin reply too large", error=str(exc))
            message = "the reply exceeds the admin frame limit"
        except Exception:
            # A handler returned something msgpack cannot carry (a set, an object...).
            log.exception("admin reply cannot be encoded")
            message = "the command's result cannot be encoded; see the daemon's log"
        return encode_frame(error_reply("internal", message))
