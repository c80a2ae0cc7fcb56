"""The ``process`` runtime: each instance is a fresh ``python -m huselet.worker``.

The simplest runtime and the baseline the faster ones are measured against.
What it guarantees:

- the worker runs in its own session/process group, with the function's
  memory limit as ``RLIMIT_AS`` and a minimal environment (no daemon secrets);
- it dies with the daemon (``PR_SET_PDEATHSIG``), even on SIGKILL;
- its exit is noticed at once through a pidfd, and it is always reaped;
- its stdout/stderr lines land in the daemon log tagged with the instance id.

Why ``subprocess.Popen`` runs on one long-lived spawner thread
(:mod:`huselet.runtime.spawner`) and not through ``trio.lowlevel.open_process``
or on the Trio thread: the parent-death signal fires when the *thread* that
forked exits — trio retires idle worker threads after seconds, which would
kill healthy instances — and a spawn on the Trio thread (~20 ms) stalls every
request on the node.
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
from huselet.runtime import children
from huselet.runtime.base import ExitStatus, InstanceHandle, InstanceSpec, Runtime, StartFailed
from huselet.runtime.children import ChildHandle, pump_output
from huselet.runtime.spawner import SpawnThread

log = get_logger("runtime.process")

_PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(None, use_errno=True)


def worker_command() -> list[str]:
    return children.worker_command(sys.executable)


def worker_env(spec: InstanceSpec) -> dict[str, str]:
    return children.worker_env(spec)


def _make_preexec(memory_bytes: int) -> Callable[[], None]:
    prctl = _libc.prctl

    def preexec() -> None:  # runs in the child between fork and exec
        prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

    return preexec


class ProcessHandle(ChildHandle):
    def __init__(self, instance_id: str, popen: subprocess.Popen[bytes]) -> None:
        super().__init__(instance_id, popen.pid)
        self._popen = popen

    def _finish(self, status: ExitStatus, returncode: int) -> ExitStatus:
        self._popen.returncode = returncode  # so Popen.__del__ does not reap again
        return status


class ProcessRuntime(Runtime):
    name = "process"

    def __init__(self, settings: Mapping[str, Any], *, node: Any) -> None:
        super().__init__(settings, node=node)
        self._nursery: trio.Nursery | None = None
        self._handles: set[ProcessHandle] = set()
        self._spawner = SpawnThread()  # spawns run off the event loop (spawner.py says why)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self._spawner.start()
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
            self._spawner.stop()

    async def _popen(self, *args: Any, **kwargs: Any) -> subprocess.Popen[bytes]:
        return await self._spawner.run(lambda: subprocess.Popen(*args, **kwargs))

    async def start(self, spec: InstanceSpec) -> InstanceHandle:
        if self._nursery is None:
            raise StartFailed("the process runtime is not running")
        memory_bytes = spec.function.memory_mb * 1024 * 1024
        try:
            popen = await self._popen(
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
        if self._nursery is None:  # the runtime stopped while the spawn ran
            popen.kill()
            popen.wait()
            raise StartFailed("the process runtime is not running")
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
    await pump_output(fd, stream_name, fields, log)
