"""The daemon's side of a zygote: spawning it, its control channel, and keeping one alive.

:class:`ZygoteProcess` is one zygote (see :mod:`huselet.sandbox.zygote` for
the other side): spawned like a ``process`` worker (by the runtime's ``spawn``:
Popen on its long-lived spawner thread, off the event loop, so the
parent-death signal is tied to a thread that lives as long as the runtime;
its cgroup joined before exec), driven over a ``SOCK_SEQPACKET`` socketpair,
reaped through a pidfd. ``fork()`` is a request/answer keyed by a sequence number
with a deadline; many may be in flight. Where the zygote places itself in
each instance's cgroup (``placer_uid``, cgroup v1: :meth:`ZygoteProcess.fork_into`)
starts need no lock and no thread: their requests queue back to back in the
control socket and the zygote clones them one after the other.

:class:`~huselet.runtime.zygoteslot.ZygoteSlot` keeps one alive.
"""

from __future__ import annotations

import array
import os
import resource
import socket
import subprocess
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from huselet.config import FunctionSettings
from huselet.log import get_logger
from huselet.runtime.base import StartFailed
from huselet.runtime.cgroups import Cgroup
from huselet.runtime.children import ChildHandle, function_env, pump_output
from huselet.runtime.hostlimits import start_failure
from huselet.sandbox import forkloop, linux
from huselet.sandbox.confine import SandboxPlan
from protocol.errors import ProtocolError
from protocol.frames import FrameDecoder, encode_frame

log = get_logger("runtime.zygote")

MAX_PACKET = 256 * 1024
STOP_GRACE_S = 1.0
REPLIES_PER_WAKE = 64  # control packets read per wake-up before the loop checkpoints
MAX_REPLY = 16 * 1024  # the zygote's replies: "forked" (~30 bytes), "fork_failed" (an error)

# Spawns a child off the event loop: ``subprocess.Popen``'s arguments, its result.
Spawn = Callable[..., Awaitable["subprocess.Popen[bytes]"]]


def zygote_command() -> list[str]:
    return [sys.executable, "-I", "-B", "-u", "-m", "huselet.sandbox.zygote"]


def _make_preexec(cgroup: Cgroup | None) -> Callable[[], None]:
    def preexec() -> None:  # in the child, between fork and exec, still root
        if cgroup is not None:
            cgroup.join(os.getpid())  # charged to its own group from its first page
        linux.set_pdeathsig(9)
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

    return preexec


class _Pending:
    __slots__ = ("done", "errno", "error", "pid")

    def __init__(self) -> None:
        self.done = trio.Event()
        self.pid: int | None = None
        self.error: str | None = None
        self.errno: int | None = None  # of the zygote's failed clone


class ZygoteProcess:
    """One running zygote and its control channel."""

    def __init__(
        self,
        name: str,
        fn: FunctionSettings,
        plan: SandboxPlan,
        cgroup: Cgroup | None,
        *,
        image: Any = None,
        on_orphan: Callable[[int], None],
        spawn: Spawn,
        placer_uid: int | None = None,
    ) -> None:
        self.name = name
        # The uid the zygote runs as when it moves itself into instance groups
        # (their cgroup.procs are chowned to it); None: the daemon moves it.
        self.placer_uid = placer_uid
        self._home_dirs: list[int] = []  # O_PATH handles of its own group, while it runs
        self.fn = fn
        self.plan = plan
        self.cgroup = cgroup
        self.image = image
        self._on_orphan = on_orphan
        self._spawn = spawn
        self.ready = trio.Event()
        self.exited = trio.Event()
        self.error: str | None = None
        self.handle: ChildHandle | None = None
        self.ready_at: float | None = None
        self._ctl: trio.socket.SocketType | None = None
        self._raw: socket.socket | None = None  # the same socket, for calls that cannot block
        self._send_lock = trio.Lock()
        # Held while the zygote is moved into an instance's cgroup and clones there.
        self.placement = trio.Lock()
        self.where: Cgroup | None = cgroup  # the cgroup the zygote is in right now
        self._pending: dict[int, _Pending] = {}
        self._seq = 0

    @property
    def pid(self) -> int | None:
        return self.handle.pid if self.handle else None

    @property
    def is_ready(self) -> bool:
        return self.ready.is_set() and self.error is None and not self.exited.is_set()

    async def run(self, start_timeout_s: float) -> None:
        """Spawn, configure and serve until the zygote exits (it is always reaped)."""
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            popen = await self._spawn(
                [*zygote_command(), "--control-fd", str(child.fileno())],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                cwd=self.fn.package,
                env=function_env(self.fn, self.image),
                pass_fds=[child.fileno()],
                close_fds=True,
                start_new_session=True,
                preexec_fn=_make_preexec(self.cgroup),
            )
        except (OSError, subprocess.SubprocessError) as exc:
            # SubprocessError: the pre-exec hook failed, e.g. its cgroup was
            # removed behind our back. One failed build, never the daemon.
            parent.close()
            why = exc.strerror if isinstance(exc, OSError) else str(exc)
            self._fail(f"could not start the zygote: {why}")
            return
        finally:
            child.close()
        self.handle = ChildHandle(self.name, popen.pid)  # it reaps; never Popen.__del__
        if self.placer_uid is not None and self.cgroup is not None:
            try:
                self._home_dirs = self.cgroup.open_dirs()
            except OSError as exc:
                self.placer_uid = None  # its group vanished: it fails below anyway
                log.warning("zygote cgroup not reachable", zygote=self.name, error=str(exc))
        popen.returncode = 0
        assert popen.stdout is not None
        out_fd = os.dup(popen.stdout.fileno())
        popen.stdout.close()
        self._ctl = trio.socket.from_stdlib_socket(parent)  # sets it non-blocking
        self._raw = parent
        fields = {"function": self.fn.name, "zygote": self.name}
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(pump_output, out_fd, "zygote", fields)
                nursery.start_soon(self._read_replies, start_timeout_s)
                try:
                    await self._send({"t": "config", "plan": self.plan.to_wire()})
                except (OSError, trio.ClosedResourceError) as exc:
                    # Killed before it got its plan (from outside, e.g. its cgroup
                    # swept): one failed build, never the runtime.
                    self.error = f"the zygote could not be configured: {exc}"
                    self.kill()
                await self.handle.reap()
                nursery.cancel_scope.deadline = trio.current_time() + 1
        finally:
            await self.handle.kill_and_reap()
            self._ctl.close()
            for fd in self._home_dirs:
                os.close(fd)
            self._home_dirs = []
            if self.error is None:
                status = self.handle.status
                self.error = f"the zygote {status.describe() if status else 'stopped'}"
            self.exited.set()
            self.ready.set()  # wake waiters: they see the error
            for pending in self._pending.values():
                pending.error = self.error
                pending.done.set()

    def _fail(self, error: str) -> None:
        self.error = error
        self.ready.set()
        self.exited.set()

    async def _send(self, msg: dict[str, Any], fds: list[int] | None = None) -> None:
        await self._send_frame(encode_frame(msg, max_frame=MAX_PACKET), fds)

    async def _send_frame(self, frame: bytes, fds: list[int] | None = None) -> None:
        assert self._ctl is not None
        anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
        if self._raw is not None and not self._send_lock.locked():
            # A SEQPACKET message goes whole or not at all: try it now, without
            # trio's wrapper (two checkpoints and a reschedule per start).
            try:
                self._raw.sendmsg([frame], anc)
                return
            except BlockingIOError:
                pass  # the zygote is behind: wait for room, in turn
        async with self._send_lock:
            await self._ctl.sendmsg([frame], anc)

    async def _read_replies(self, start_timeout_s: float) -> None:
        assert self._ctl is not None
        try:
            with trio.move_on_after(start_timeout_s) as startup:
                msg = await self._receive()
                if msg is not None and msg.get("t") == "ready":
                    if self._home_dirs:
                        # Once, before any start: the zygote opens its own group's
                        # cgroup.procs with its own credentials and keeps them, so
                        # going home costs it one write per hierarchy. After ready:
                        # the function's init code never held them.
                        await self._send({"t": "home"}, self._home_dirs)
                    self.ready_at = trio.current_time()
                    self.ready.set()
                elif msg is not None and msg.get("t") == "fatal":
                    self.error = str(msg.get("error", "the zygote failed"))
                    self.kill()
                    return
                else:
                    self.kill()
                    return
            if startup.cancelled_caught:
                self.error = f"the zygote was not ready within {start_timeout_s:g} s"
                self.kill()
                return
            await self._answer_all()
        except (OSError, ProtocolError, trio.ClosedResourceError) as exc:
            log.warning("zygote control channel failed", zygote=self.name, error=str(exc))
            self.kill()

    async def _answer_all(self) -> None:
        """Answer replies until EOF: every packet waiting at each wake-up, one wait for all.

        A burst's replies arrive back to back; trio's ``recv`` would cost each
        of them a wait, two checkpoints and a reschedule.
        """
        assert self._ctl is not None and self._raw is not None
        recv_into = self._raw.recv_into
        # Replies are a few dozen bytes: one buffer for all (``recv(MAX_PACKET)``
        # allocates 256 KiB per call); a longer packet arrives cut, and fails to decode.
        view = memoryview(bytearray(MAX_REPLY))
        while True:
            await trio.lowlevel.wait_readable(self._ctl)
            for _ in range(REPLIES_PER_WAKE):  # then the wait above is a checkpoint
                try:
                    n = recv_into(view)
                except BlockingIOError:
                    break
                if not n:
                    return
                self._answer(_decode(view[:n].tobytes()))

    async def _receive(self) -> dict[str, Any] | None:
        assert self._ctl is not None
        data = await self._ctl.recv(MAX_PACKET)
        if not data:
            return None
        return _decode(data)

    def _answer(self, msg: dict[str, Any]) -> None:
        kind, seq = msg.get("t"), msg.get("seq")
        pending = self._pending.pop(seq, None) if isinstance(seq, int) else None
        pid = msg.get("pid")
        if kind == "forked" and isinstance(pid, int) and pid > 0:
            if pending is None:
                self._on_orphan(pid)  # its start gave up waiting: the child must not linger
                return
            pending.pid = pid
        elif pending is not None:
            pending.error = str(msg.get("error", "the zygote could not fork"))
            code = msg.get("errno")
            pending.errno = code if isinstance(code, int) else None
        if pending is not None:
            pending.done.set()

    @property
    def busy(self) -> bool:
        """A start is using it (placing it, or waiting for a clone)."""
        return self.placement.locked() or bool(self._pending)

    async def fork_into(
        self, target: Cgroup, request: dict[str, Any], fds: list[int], deadline: float
    ) -> int:
        """:meth:`fork` with the child born in ``target``, the zygote placing itself there.

        Only for a zygote with :attr:`placer_uid` whose ``target`` is owned by
        that uid (:meth:`Cgroup.own`). The zygote may still be in ``target``
        when it answers (it leaves for the next start's group, or home once
        idle): the group is emptied sparing it (:meth:`CgroupPool.release`).
        """
        if not self._home_dirs:
            raise StartFailed("the zygote cannot place itself: its own cgroup is gone")
        dirs = target.open_dirs()
        try:
            place = {**request, "place": len(dirs)}
            return await self.fork(place, [*fds, *dirs], deadline)
        finally:
            for fd in dirs:
                os.close(fd)

    async def fork(self, request: dict[str, Any], fds: list[int], deadline: float) -> int:
        """Ask for one instance; returns its pid (not yet trusted: the caller checks it)."""
        if not self.is_ready:
            raise StartFailed(self.error or "the zygote is not ready")
        self._seq += 1
        seq = self._seq
        pending = self._pending[seq] = _Pending()
        try:
            with trio.move_on_at(deadline):
                frame = forkloop.fork_request(
                    seq,
                    request["id"],
                    request["token"],
                    request.get("env") or {},
                    request.get("place", 0),
                )
                await self._send_frame(frame, fds)
                await pending.done.wait()
        except (OSError, trio.ClosedResourceError) as exc:
            raise StartFailed(f"the zygote is unreachable: {exc}") from None
        except BaseException:
            # Cancelled: a child forked for us (now or later) must not linger.
            if pending.pid is not None:
                self._on_orphan(pending.pid)
            raise
        finally:
            self._pending.pop(seq, None)  # a late answer now goes to _on_orphan
        if not pending.done.is_set():
            raise StartFailed("the zygote did not fork the instance in time")
        if pending.pid is None:
            raise start_failure(
                "the zygote could not fork the instance", pending.errno, str(pending.error)
            )
        return pending.pid

    async def fork_placed(
        self, target: Cgroup | None, request: dict[str, Any], fds: list[int], deadline: float
    ) -> int:
        """:meth:`fork` with the child born in ``target``: the zygote visits it for the clone.

        The caller holds :attr:`placement`, and calls :meth:`go_home` after
        releasing it: under a burst the zygote goes straight from one
        instance's cgroup to the next (one migration per start), and the way
        home is off the start's critical path.
        """
        await self._move(target)
        return await self.fork(request, fds, deadline)

    def away(self) -> bool:
        """Did the daemon leave the zygote in another group than its own (it has one)?"""
        return self.cgroup is not None and self.where is not self.cgroup

    async def go_home(self) -> None:
        """Back to its own cgroup, unless another start is about to move it anyway."""
        if self.placement.statistics().tasks_waiting:
            return
        async with self.placement:
            await self._move_home()

    async def evict_from(self, group: Cgroup) -> None:
        """Make sure the zygote is not in ``group`` (before that group is emptied)."""
        while self.where is group and not self.exited.is_set():
            async with self.placement:
                if self.where is group:
                    await self._move_home()

    async def _move_home(self) -> None:
        try:
            await self._move(self.cgroup)
        except FileNotFoundError:
            # Its own cgroup is gone: the zygote is being torn down (its slot
            # closed, or the runtime is stopping) while this move waited for a
            # thread. Nothing to go back to; it is in no group we will empty.
            self.where = None

    async def _move(self, target: Cgroup | None) -> None:
        if target is None or self.where is target or self.pid is None:
            return
        try:
            await target.join_async(self.pid)
        except ProcessLookupError:
            pass  # the zygote died: it is being rebuilt
        self.where = target

    def memory_bytes(self) -> int:
        """What the zygote costs: its cgroup's usage, or its PSS without cgroups."""
        if self.cgroup is not None:
            return self.cgroup.memory_usage()
        return pss_kb(self.pid) * 1024 if self.pid else 0

    def kill(self) -> None:
        if self.handle is not None:
            self.handle.kill()


def _decode(data: bytes) -> dict[str, Any]:
    """One control packet (one whole frame) as its message; ProtocolError if it is not."""
    decoder = FrameDecoder(max_frame=MAX_PACKET)
    decoder.receive_data(data)
    msg = decoder.next_frame()
    if not isinstance(msg, dict):
        raise ProtocolError("incomplete control frame")
    return msg


def pss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0
