"""Pieces every runtime that runs workers as the daemon's child processes shares.

- the worker command line and its minimal environment (nothing of the
  daemon's own environment leaks beyond locale and time zone);
- :class:`ChildHandle`: an instance that is a direct child of the daemon,
  watched through a pidfd (its exit is a readable event, noticed at once)
  and reaped with ``wait4`` (true status and rusage; no zombie left);
- :func:`pump_output`: a child's stdout/stderr lines into the daemon log,
  within the instance's output rate limit (:mod:`huselet.runtime.output`);
- :func:`dial_link`: the daemon connects a function's link socket on behalf
  of a sandbox that cannot (and should not) see it, and hands over the socket.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import signal
import socket
from collections.abc import Callable, Container
from pathlib import Path
from typing import Any

import trio

from huselet.config import FunctionSettings
from huselet.log import get_logger
from huselet.runtime.base import ExitStatus, InstanceHandle, InstanceSpec, StartFailed
from huselet.runtime.cgroups import Cgroup, parent_pid
from huselet.runtime.codeimage import code_env
from huselet.runtime.fdwatch import FdWatcher
from huselet.runtime.locallinks import local_pair
from huselet.runtime.output import OutputLimiter, OutputLines

log = get_logger("runtime")

# Environment variables passed through from the daemon (nothing else leaks).
PASSTHROUGH_ENV = ("LANG", "LC_ALL", "TZ")
DIAL_RETRY_S = 0.001
DIAL_RETRY_MAX_S = 0.05


def worker_command(python: str) -> list[str]:
    # -I: ignore PYTHON* variables, user site and cwd on sys.path (the package
    #     dir is put on sys.path explicitly by the worker);
    # -B: never write __pycache__ into the function package;
    # -u: unbuffered stdout/stderr so log lines arrive as they are printed.
    return [python, "-I", "-B", "-u", "-m", "huselet.worker"]


def function_env(fn: FunctionSettings, image: Any = None) -> dict[str, str]:
    """What every process of a function sees: locale, PATH, its own env, its identity."""
    env = {k: os.environ[k] for k in PASSTHROUGH_ENV if k in os.environ}
    env.setdefault("LANG", "C.UTF-8")
    env["PATH"] = "/usr/local/bin:/usr/bin:/bin"
    env.update(fn.env)
    env.update(
        {
            "HUSELET_FUNCTION": fn.name,
            "HUSELET_PACKAGE": str(fn.package),
            "HUSELET_HANDLER": fn.handler,
            "HUSELET_KIND": fn.kind.value,
        }
    )
    env.update(code_env(image))
    return env


def worker_env(spec: InstanceSpec, *, link_fd: int | None = None) -> dict[str, str]:
    """The environment of one exec'd worker (``link_fd``: a dialled link instead of a path)."""
    env = function_env(spec.function, spec.image)
    env.update(spec.env)
    env["HUSELET_INSTANCE_ID"] = spec.instance_id
    env["HUSELET_TOKEN"] = spec.token
    if link_fd is None:
        env["HUSELET_LINK"] = str(spec.link_socket)
    else:
        env["HUSELET_LINK_FD"] = str(link_fd)
    return env


class ChildHandle(InstanceHandle):
    """An instance that is a direct child of the daemon (it alone may reap it)."""

    def __init__(self, instance_id: str, pid: int, pidfd: int | None = None) -> None:
        self.instance_id = instance_id
        self.pid: int = pid
        self._status: ExitStatus | None = None
        self._exited = trio.Event()
        self._on_exit: list[Callable[[ExitStatus], None]] = []
        self._watcher: FdWatcher | None = None
        # The pidfd makes the exit a readable event: noticed at once, no polling.
        self._pidfd = os.pidfd_open(pid) if pidfd is None else pidfd

    @property
    def status(self) -> ExitStatus | None:
        return self._status

    def _finish(self, status: ExitStatus, returncode: int) -> ExitStatus:
        """Hook for subclasses: enrich the status (OOM) once the child is reaped."""
        return status

    def on_exit(self, callback: Callable[[ExitStatus], None]) -> bool:
        """Call ``callback(status)`` once the child is reaped (at once if it was)."""
        if self._status is not None:
            callback(self._status)
        else:
            self._on_exit.append(callback)
        return True

    def watch_with(self, watcher: FdWatcher) -> None:
        """Have ``watcher``'s task reap the child as it exits: no task of its own."""
        self._watcher = watcher
        watcher.watch(self._pidfd, self._poll_exit)

    def _poll_exit(self) -> None:
        if self._status is None:
            self._reaped(os.WNOHANG)

    async def reap(self) -> None:
        """Wait for the exit and reap; run by the runtime for every child not watched.

        Cancelled while waiting, it can be called again (the pidfd stays open).
        """
        if self._exited.is_set():
            return
        watcher = self._watcher
        if watcher is not None and watcher.running:
            await self._exited.wait()
            return
        if watcher is not None:  # its watcher stopped (the daemon is stopping): reap here
            watcher.unwatch(self._pidfd)
            self._watcher = None
        await trio.lowlevel.wait_readable(self._pidfd)
        # The pidfd said the child exited: wait4 returns at once.
        self._reaped(0)

    def _reaped(self, flags: int) -> None:
        try:
            pid, wstatus, rusage = os.wait4(self.pid, flags)
            if pid == 0:
                return  # not exited yet (a readiness that was not this child's)
            returncode = os.waitstatus_to_exitcode(wstatus)
            status = ExitStatus.from_returncode(
                returncode, max_rss_kb=rusage.ru_maxrss, cpu_s=rusage.ru_utime + rusage.ru_stime
            )
        except ChildProcessError:
            # Reaped by someone else (it cannot be by us): the code is lost, the exit is not.
            returncode, status = -1, ExitStatus(code=-1)
        if self._watcher is not None:
            self._watcher.unwatch(self._pidfd)
        os.close(self._pidfd)
        self._status = self._finish(status, returncode)
        self._exited.set()
        callbacks, self._on_exit = self._on_exit, []
        for callback in callbacks:
            callback(self._status)

    async def kill_and_reap(self, timeout_s: float = 5.0) -> None:
        """Kill and reap even from a cancelled scope (cleanup paths)."""
        self.kill()
        with trio.CancelScope(shield=True), trio.move_on_after(timeout_s):
            await self.reap()

    async def wait(self) -> ExitStatus:
        await self._exited.wait()
        assert self._status is not None
        return self._status

    def _signal_group(self, sig: int) -> None:
        # Until it is reaped the pid (and its process group id) cannot be reused.
        if self._status is not None:
            return
        try:
            os.killpg(self.pid, sig)
        except ProcessLookupError:
            pass
        except PermissionError:
            os.kill(self.pid, sig)

    def kill(self) -> None:
        self._signal_group(signal.SIGKILL)

    def terminate(self) -> None:
        self._signal_group(signal.SIGTERM)


class SandboxHandle(ChildHandle):
    """A child whose memory limit is a cgroup: an OOM kill shows in the group's counter."""

    def __init__(
        self, instance_id: str, pid: int, cgroup: Cgroup | None, pidfd: int | None = None
    ) -> None:
        super().__init__(instance_id, pid, pidfd)
        self.cgroup = cgroup
        self._oom_baseline = cgroup.oom_baseline if cgroup is not None else 0

    def _finish(self, status: ExitStatus, returncode: int) -> ExitStatus:
        if self.cgroup is not None and self.cgroup.oom_kills() > self._oom_baseline:
            return dataclasses.replace(status, oom_killed=True)
        return status


class StrayReaper:
    """Reaps zombie children of the daemon that nobody claims.

    They come from children that are the daemon's without a handle: an
    instance forked for a start that gave up (fork), processes re-parented to
    the daemon while it is a child subreaper (oci). Only zombies seen on two sweeps in a
    row are reaped: whoever else in the daemon owns a child has had a whole
    sweep interval to reap it.
    """

    def __init__(self) -> None:
        self._seen: set[int] = set()

    def sweep(self, known: Container[int]) -> int:
        if not has_zombie_child():
            # The common case, asked of the kernel without listing thousands of
            # children (an idle node's sweep was O(instances) every few seconds).
            self._seen = set()
            return 0
        zombies = set()
        for pid in own_children():
            if pid in known:
                continue
            try:
                state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
            except (OSError, IndexError):
                continue
            if state == "Z":
                zombies.add(pid)
        reaped = 0
        for pid in zombies & self._seen:
            try:
                if os.waitpid(pid, os.WNOHANG)[0]:
                    reaped += 1
            except ChildProcessError:
                pass
        self._seen = zombies - self._seen
        return reaped


def has_zombie_child() -> bool:
    """Has this process an exited child not yet reaped? (Peeks: reaps nothing.)"""
    try:
        info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return False  # no children at all
    return info is not None


def own_children() -> list[int]:
    pids: list[int] = []
    for task in os.listdir("/proc/self/task"):
        try:
            listed = Path(f"/proc/self/task/{task}/children").read_text()
        except OSError:
            continue
        pids.extend(int(p) for p in listed.split())
    return pids


def is_our_child(pidfd: int) -> bool:
    """True if the process behind ``pidfd`` is this process's child (alive or not yet reaped).

    One ``waitid`` that reaps nothing (``WNOWAIT``), instead of reading its
    parent from ``/proc/PID/stat``: once per fork start.
    """
    try:
        os.waitid(os.P_PIDFD, pidfd, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return False
    return True


def reap_orphan(pid: int, nursery: trio.Nursery | None) -> None:
    """Kill and reap ``pid`` if it is this process's child that nothing else owns
    (forked for a start that already gave up); in ``nursery``, or at once when
    shutting down (None: no nursery left; SIGKILL makes the wait short)."""
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    if parent_pid(pid) != os.getpid():
        os.close(pidfd)
        return
    handle = ChildHandle(f"orphan-{pid}", pid, pidfd)
    if nursery is not None:
        nursery.start_soon(handle.kill_and_reap)
        return
    handle.kill()
    os.close(pidfd)
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:
        pass


async def dial_link(path: os.PathLike[str] | str, deadline: float) -> socket.socket:
    """Connect to a function's link socket for a sandbox; a plain (stdlib) socket.

    Non-blocking so the accept loop on this same thread is never starved; a
    full backlog (EAGAIN on Unix sockets) is retried until ``deadline``. A
    socket this process serves itself is dialled with a socket pair instead
    (:mod:`huselet.runtime.locallinks`): no connect, no accept.
    """
    try:
        local = local_pair(path)
    except OSError as exc:  # e.g. out of descriptors
        raise StartFailed(f"cannot make the instance's link: {exc.strerror}") from None
    if local is not None:
        return local
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    sock.setblocking(False)
    delay = DIAL_RETRY_S
    try:
        while True:
            try:
                sock.connect(os.fspath(path))
                return sock
            except BlockingIOError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EINPROGRESS):
                    raise
            if trio.current_time() >= deadline:
                raise StartFailed("the function's link socket is not accepting connections")
            await trio.sleep(delay)
            delay = min(DIAL_RETRY_MAX_S, delay * 2)  # a full backlog drains at accept's pace
    except OSError as exc:
        sock.close()
        raise StartFailed(f"cannot reach the function's link socket: {exc.strerror}") from None
    except BaseException:
        sock.close()
        raise


async def pump_output(
    fd: int,
    stream_name: str,
    fields: dict[str, Any],
    logger: Any = log,
    limiter: OutputLimiter | None = None,
) -> None:
    """Forward a child's output line by line into the log until EOF; owns ``fd``.

    ``limiter``: the instance's output budget, shared by its streams (one
    per call if not given); what is over it is read and dropped, and counted.
    """
    lines = OutputLines(stream_name, fields, logger, limiter or OutputLimiter())
    stream = trio.lowlevel.FdStream(fd)
    try:
        async with stream:
            while chunk := await stream.receive_some(65536):
                lines.feed(chunk)
    except (trio.ClosedResourceError, OSError):
        pass
    finally:
        lines.finish()
