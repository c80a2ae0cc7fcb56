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
(:mod:`huselet.runtime.spawner`, through :class:`~huselet.runtime.common.ChildRuntime`
as in every built-in runtime) and not through ``trio.lowlevel.open_process``
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

from huselet.config.table import ConfigTable
from huselet.log import get_logger
from huselet.runtime import children
from huselet.runtime.base import InstanceHandle, InstanceSpec, StartFailed
from huselet.runtime.children import ChildHandle, dial_link
from huselet.runtime.codeimage import code_ro_paths
from huselet.runtime.common import ChildRuntime, sandbox_plan
from huselet.runtime.isolation import NETWORK_MODES, UidAllocator, check_uid_range
from huselet.sandbox.confine import PLAN_ENV

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


class ProcessRuntime(ChildRuntime):
    name = "process"
    shutdown_s = 5.0

    def __init__(self, settings: Mapping[str, Any], *, node: Any) -> None:
        super().__init__(settings, node=node)
        # Only root can drop; an unprivileged daemon's workers run as itself.
        self.drops = os.geteuid() == 0 and self.isolation
        self._uids = UidAllocator(self.uid_base, self.uid_count)
        self._staging = Path(node.run_dir) / "sandbox" / self.name
        self._handles: set[ChildHandle] = set()

    def configure(self, table: ConfigTable) -> None:
        # false: workers run unconfined as the daemon's own uid (debugging only).
        self.isolation = table.boolean("isolation", default=True)
        self.network = table.choice("network", NETWORK_MODES, default="none")
        self.uid_base = table.positive_int("uid_base", default=UID_BASE, minimum=1000)
        self.uid_count = table.positive_int("uid_count", default=UID_COUNT)
        check_uid_range(table, self.uid_base, self.uid_count)

    def uid_allocator(self) -> UidAllocator | None:
        return self._uids if self.drops else None

    async def shutdown(self) -> None:
        # The daemon is going away: leave nothing behind.
        for handle in list(self._handles):
            await handle.kill_and_reap()

    async def start(self, spec: InstanceSpec) -> InstanceHandle:
        self.running()
        preexec = _make_preexec(spec.function.memory_mb * 1024 * 1024)
        if not self.drops:
            return await self._spawn(spec, worker_command(), worker_env(spec), [], preexec)
        deadline = trio.current_time() + spec.function.start_timeout_ms / 1000
        fn = spec.function
        uid = self._uids.uid_for(fn.name)
        staging = self._staging / fn.name
        staging.mkdir(mode=0o755, parents=True, exist_ok=True)
        ro_paths = code_ro_paths(spec.image)
        plan = sandbox_plan(fn, staging, ro_paths, uid, network=self.network, userns=False)
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
    ) -> ChildHandle:
        try:
            popen, nursery = await self.spawn_instance(
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
        handle = ChildHandle(spec.instance_id, popen.pid)
        self._handles.add(handle)
        fields = {"instance": spec.instance_id, "function": spec.function.name}
        nursery.start_soon(self._supervise, handle, popen, fields)
        return handle

    async def _supervise(
        self, handle: ChildHandle, popen: subprocess.Popen[bytes], fields: dict[str, Any]
    ) -> None:
        try:
            await self.pump_and_reap(handle, popen, fields, log)
        finally:
            self._handles.discard(handle)
            if handle.status is None:  # cancelled: the daemon is stopping
                await handle.kill_and_reap()
