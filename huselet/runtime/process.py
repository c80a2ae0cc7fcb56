"""The ``process`` runtime: each instance is a fresh ``python -m huselet.worker``.

The simplest runtime and the baseline the faster ones are measured against.
What it guarantees:

- the worker runs in its own session/process group, with the function's
  memory limit as ``RLIMIT_AS`` and a minimal environment (no daemon secrets);
- it dies with the daemon (``PR_SET_PDEATHSIG``), even on SIGKILL;
- its exit is noticed at once through a pidfd, and it is always reaped;
- its stdout/stderr lines land in the daemon log tagged with the instance id.

Why ``subprocess.Popen`` is called on the Trio thread and not through
``trio.lowlevel.open_process``: the latter forks from a worker thread, and the
parent-death signal fires when the *thread* that forked exits — trio retires
idle worker threads after seconds, which would kill healthy instances.
"""

from __future__ import annotations

import ctypes
import os
import resource
import signal
import subprocess
import sys
from collections.abc import Callable, Mapping
from typing import Any

import trio

from huselet.log import get_logger
from huselet.runtime.base import ExitStatus, InstanceHandle, InstanceSpec, Runtime, StartFailed

log = get_logger("runtime.process")

_PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(None, use_errno=True)
MAX_LOG_LINE = 4096
# Environment variables passed through from the daemon (nothing else leaks).
_PASSTHROUGH_ENV = ("LANG", "LC_ALL", "TZ")


def worker_command() -> list[str]:
    # -I: ignore PYTHON* variables, user site and cwd on sys.path (the package
    #     dir is put on sys.path explicitly by the worker);
    # -B: never write __pycache__ into the function package;
    # -u: unbuffered stdout/stderr so log lines arrive as they are printed.
    return [sys.executable, "-I", "-B", "-u", "-m", "huselet.worker"]


def worker_env(spec: InstanceSpec) -> dict[str, str]:
    fn = spec.function
    env = {k: os.environ[k] for k in _PASSTHROUGH_ENV if k in os.environ}
    env.setdefault("LANG", "C.UTF-8")
    env["PATH"] = "/usr/local/bin:/usr/bin:/bin"
    env.update(fn.env)
    env.update(spec.env)
    env.update(
        {
            "HUSELET_LINK": str(spec.link_socket),
            "HUSELET_INSTANCE_ID": spec.instance_id,
            "HUSELET_TOKEN": spec.token,
            "HUSELET_FUNCTION": fn.name,
            "HUSELET_PACKAGE": str(fn.package),
            "HUSELET_HANDLER": fn.handler,
        }
    )
    if spec.image is not None:
        env["HUSELET_IMAGE"] = str(spec.image)
    return env


def _make_preexec(memory_bytes: int) -> Callable[[], None]:
    prctl = _libc.prctl

    def preexec() -> None:  # runs in the child between fork and exec
        prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

    return preexec


class ProcessHandle(InstanceHandle):
    def __init__(self, instance_id: str, popen: subprocess.Popen[bytes]) -> None:
        self.instance_id = instance_id
        self.pid: int = popen.pid
        self._popen = popen
        self._status: ExitStatus | None = None
        self._exited = trio.Event()
        # The pidfd makes the exit a readable event: noticed at once, no polling.
        self._pidfd = os.pidfd_open(popen.pid)

    @property
    def status(self) -> ExitStatus | None:
        return self._status

    async def reap(self) -> None:
        """Wait for the exit and reap; run by the runtime for every process."""
        try:
            await trio.lowlevel.wait_readable(self._pidfd)
            _, wstatus, rusage = os.wait4(self.pid, 0)
            returncode = os.waitstatus_to_exitcode(wstatus)
            status = ExitStatus.from_returncode(
                returncode, max_rss_kb=rusage.ru_maxrss, cpu_s=rusage.ru_utime + rusage.ru_stime
            )
        except ChildProcessError:
            # Reaped by someone else (it cannot be by us): the code is lost, the exit is not.
            returncode, status = -1, ExitStatus(code=-1)
        finally:
            os.close(self._pidfd)
        self._popen.returncode = returncode  # so Popen.__del__ does not reap again
        self._status = status
        self._exited.set()

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


class ProcessRuntime(Runtime):
    name = "process"

    def __init__(self, settings: Mapping[str, Any], *, node: Any) -> None:
        super().__init__(settings, node=node)
        self._nursery: trio.Nursery | None = None
        self._handles: set[ProcessHandle] = set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                task_status.started()
                await trio.sleep_forever()
        finally:
            self._nursery = None
            # The daemon is going away: leave nothing behind.
            for handle in list(self._handles):
                handle.kill()

    async def start(self, spec: InstanceSpec) -> InstanceHandle:
        if self._nursery is None:
            raise StartFailed("the process runtime is not running")
        memory_bytes = spec.function.memory_mb * 1024 * 1024
        try:
            popen = subprocess.Popen(
                worker_command(),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                cwd=spec.function.package,
                env=worker_env(spec),
                close_fds=True,
                start_new_session=True,
                preexec_fn=_make_preexec(memory_bytes),
            )
        except OSError as exc:
            log.error("spawn failed", instance=spec.instance_id, error=str(exc))
            raise StartFailed(f"could not start the worker process: {exc.strerror}") from None
        handle = ProcessHandle(spec.instance_id, popen)
        self._handles.add(handle)
        fields = {"instance": spec.instance_id, "function": spec.function.name}
        assert popen.stdout is not None and popen.stderr is not None
        self._nursery.start_soon(self._supervise, handle, popen, fields)
        return handle

    async def _supervise(
        self, handle: ProcessHandle, popen: subprocess.Popen[bytes], fields: dict[str, Any]
    ) -> None:
        assert popen.stdout is not None and popen.stderr is not None
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_pump_lines, popen.stdout, "stdout", fields)
                nursery.start_soon(_pump_lines, popen.stderr, "stderr", fields)
                await handle.reap()
        finally:
            self._handles.discard(handle)
            if handle.status is None:  # cancelled: the daemon is stopping
                handle.kill()


async def _pump_lines(pipe: Any, stream_name: str, fields: dict[str, Any]) -> None:
    """Forward a child's output line by line into the log until EOF."""
    fd = os.dup(pipe.fileno())
    pipe.close()
    stream = trio.lowlevel.FdStream(fd)
    pending = b""
    try:
        async with stream:
            while chunk := await stream.receive_some(65536):
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    _log_output(line, stream_name, fields)
                if len(pending) > MAX_LOG_LINE:
                    _log_output(pending, stream_name, fields)
                    pending = b""
            if pending:
                _log_output(pending, stream_name, fields)
    except (trio.ClosedResourceError, OSError):
        pass


def _log_output(line: bytes, stream_name: str, fields: dict[str, Any]) -> None:
    text = line[:MAX_LOG_LINE].decode("utf-8", "replace")
    log.info("instance output", stream=stream_name, line=text, **fields)
