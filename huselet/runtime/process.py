"""The ``process`` runtime: each instance is a fresh ``python -m huselet.worker``.

The simplest runtime and the baseline the faster ones are measured against.
What it guarantees:

- the worker runs in its own session/process group, with the function's
  memory limit as ``RLIMIT_AS`` and a minimal environment (no daemon secrets);
- it dies with the daemon (``PR_SET_PDEATHSIG``), even on SIGKILL;
- its exit is noticed at once through a pidfd, and it is always reaped;
- its stdout/stderr lines land in the daemon log tagged with the instance id;
- when the daemon is root (safe by default) it starts through
  :mod:`huselet.sandbox.launch`, which confines itself as a ``fork`` zygote
  does before importing the worker: the function's own unprivileged uid
  (``uid_base``, ``uid_count``) with no capabilities and ``no_new_privs``;
  its own network namespace with only loopback unless ``network = "host"``;
  a read-only root holding Python and the function's code only — the run
  dir, the admin socket and the other functions' sockets do not exist for
  it: the daemon dials its link and passes the connected socket. Staging
  (empty mount points) lives in ``run_dir/sandbox/process/<function>``.

``[runtimes.process]`` keys: ``isolation`` (default true; false runs workers
unconfined as the daemon's uid), ``network`` (``none`` | ``host``),
``uid_base``, ``uid_count``. An unprivileged daemon cannot confine: its
workers run as itself.

Why ``subprocess.Popen`` runs on one long-lived spawner thread
(:mod:`huselet.runtime.spawner`) and not through ``trio.lowlevel.open_process``
or on the Trio thread: the parent-death signal fires when the *thread* that
forked exits — trio retires idle worker threads after seconds, which would
kill healthy instances — and a spawn on the Trio thread (~20 ms) stalls every
request on the node.
"""

from __future__ import annotations

import ctypes
import json
import os
import resource
import signal
import subprocess
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import trio

from huselet.log import get_logger
from huselet.runtime import children
from huselet.runtime.base import (
    ExitStatus,
    InstanceHandle,
    InstanceSpec,
    Runtime,
    RuntimeConfigError,
    StartFailed,
)
from huselet.runtime.children import ChildHandle, dial_link, pump_output
from huselet.runtime.isolation import NETWORK_MODES, Table, UidAllocator
from huselet.runtime.output import OutputLimiter
from huselet.runtime.spawner import SpawnThread
from huselet.sandbox.confine import PLAN_ENV, SandboxPlan

log = get_logger("runtime.process")

# Per-function uids of process-runtime workers (below fork/bwrap's default 200000).
UID_BASE = 190_000
UID_COUNT = 10_000

_PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(None, use_errno=True)


def worker_command() -> list[str]:
    return children.worker_command(sys.executable)


def worker_env(spec: InstanceSpec, *, link_fd: int | None = None) -> dict[str, str]:
    return children.worker_env(spec, link_fd=link_fd)


def _make_preexec(memory_bytes: int) -> Callable[[], None]:
    prctl = _libc.prctl

    def preexec() -> None:  # runs in the child between fork and exec
        prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

    return preexec


def launcher_command() -> list[str]:
    return [sys.executable, "-I", "-B", "-u", "-m", "huselet.sandbox.launch"]


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
        table = Table(settings, self.name)
        # false: workers run unconfined as the daemon's own uid (debugging only).
        self.isolation = table.boolean("isolation", True)
        self.network = table.choice("network", NETWORK_MODES, "none")
        self.uid_base = table.integer("uid_base", UID_BASE, minimum=1000)
        self.uid_count = table.integer("uid_count", UID_COUNT, minimum=1)
        table.finish()
        if self.uid_base + self.uid_count > 2**31:
            raise RuntimeConfigError("runtimes.process.uid_count: range exceeds 2^31")
        # Only root can drop; an unprivileged daemon's workers run as itself.
        self.drops = os.geteuid() == 0 and self.isolation
        self._uids = UidAllocator(self.uid_base, self.uid_count)
        self._staging = Path(node.run_dir) / "sandbox" / self.name
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
        preexec = _make_preexec(spec.function.memory_mb * 1024 * 1024)
        if not self.drops:
            return await self._spawn(spec, worker_command(), worker_env(spec), [], preexec)
        deadline = trio.current_time() + spec.function.start_timeout_ms / 1000
        fn = spec.function
        uid = self._uids.uid_for(fn.name)
        staging = self._staging / fn.name
        staging.mkdir(mode=0o755, parents=True, exist_ok=True)
        plan = SandboxPlan(
            function=fn.name,
            package=str(fn.package),
            handler=fn.handler,
            staging=str(staging),
            ro_paths=(str(spec.image),) if spec.image is not None else (),
            network=self.network,
            uid=uid,
            gid=uid,
            userns=False,
            seccomp=True,
            daemon_pid=os.getpid(),
        )
        # The worker never sees the run dir: the daemon dials its link for it.
        link = await dial_link(spec.link_socket, deadline)
        try:
            env = worker_env(spec, link_fd=link.fileno())
            env["HUSELET_LINK"] = str(spec.link_socket)  # only the restart sweep's marker
            env[PLAN_ENV] = json.dumps(plan.to_wire())
            # Awaited before the finally: the link is closed only once the child has it.
            return await self._spawn(spec, launcher_command(), env, [link.fileno()], preexec)
        finally:
            link.close()

    async def _spawn(
        self,
        spec: InstanceSpec,
        argv: list[str],
        env: dict[str, str],
        pass_fds: list[int],
        preexec: Callable[[], None],
    ) -> ProcessHandle:
        try:
            popen = await self._popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                cwd=spec.function.package,
                env=env,
                pass_fds=pass_fds,
                close_fds=True,
                start_new_session=True,
                preexec_fn=preexec,
            )
        except (OSError, subprocess.SubprocessError) as exc:
            log.error("spawn failed", instance=spec.instance_id, error=str(exc))
            why = exc.strerror if isinstance(exc, OSError) else str(exc)
            raise StartFailed(f"could not start the worker process: {why}") from None
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
                limiter = OutputLimiter()  # one budget for both streams
                nursery.start_soon(_pump_lines, popen.stdout, "stdout", fields, limiter)
                nursery.start_soon(_pump_lines, popen.stderr, "stderr", fields, limiter)
                await handle.reap()
        finally:
            self._handles.discard(handle)
            if handle.status is None:  # cancelled: the daemon is stopping
                handle.kill()


async def _pump_lines(
    pipe: Any, stream_name: str, fields: dict[str, Any], limiter: OutputLimiter
) -> None:
    """Forward a child's output line by line into the log until EOF."""
    fd = os.dup(pipe.fileno())
    pipe.close()
    await pump_output(fd, stream_name, fields, log, limiter)
