"""The shared base of the built-in runtimes: their plumbing, written once.

:class:`ChildRuntime` — a runtime whose instances are child processes of the
daemon (``process``, ``fork``, ``bwrap``, ``oci``):

- its ``[runtimes.NAME]`` table is read through one
  :class:`~huselet.config.table.ConfigTable` (:meth:`Runtime.config_table
  <huselet.runtime.base.Runtime.config_table>`; a subclass reads its own keys in
  :meth:`~ChildRuntime.configure`; unknown keys are refused after);
- one nursery supervises its instances; :meth:`~ChildRuntime.run` is the same
  lifecycle for all: :meth:`~ChildRuntime.prepare` the host, start the
  background tasks (:meth:`~ChildRuntime.serve`), serve, and on the way out
  :meth:`~ChildRuntime.shutdown` (bounded, shielded) so nothing is left behind;
- every blocking spawn (``subprocess.Popen``: a fork of a large daemon, an
  exec, a pre-exec hook — milliseconds) runs on the runtime's one long-lived
  spawner thread, never on the event loop (:mod:`huselet.runtime.spawner`
  says why it is not one of trio's worker threads).

:class:`SandboxRuntime` adds what the namespace/cgroup runtimes (``fork``,
``bwrap``, ``oci``) share: the isolation keys of
:mod:`huselet.runtime.isolation`, the host probe (a missing feature refuses the
start unless degrading is allowed), the function's helper uid, and the pool of
pre-created instance cgroups.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import trio

from huselet.config import FunctionSettings
from huselet.config.table import ConfigTable
from huselet.log import get_logger
from huselet.runtime.base import Runtime, StartFailed
from huselet.runtime.cgrouppool import CgroupPool
from huselet.runtime.cgroups import Cgroup
from huselet.runtime.children import ChildHandle, pump_output
from huselet.runtime.identity import sandbox_subtree
from huselet.runtime.isolation import (
    HostFeatures,
    IsolationSettings,
    UidAllocator,
    identity,
    parse_isolation,
    probe_host,
    resolve,
    uid_nproc,
)
from huselet.runtime.output import OutputLimiter
from huselet.runtime.spawner import SpawnThread
from huselet.sandbox.confine import SandboxPlan
from huselet.timegrid import sleep_on_grid

log = get_logger("runtime")

MiB = 1024 * 1024
CGROUP_REFILL_S = 1.0  # instance cgroups are pre-created off the start path this often
OUTPUT_DRAIN_S = 1.0  # output still buffered when a child exits arrives within this


class ChildRuntime(Runtime):
    """Base of runtimes whose instances are the daemon's children (see the module docstring)."""

    # How long shutdown may take: it kills and reaps, and removes what it made.
    shutdown_s: ClassVar[float] = 15.0

    def __init__(self, settings: Mapping[str, Any], *, node: Any) -> None:
        super().__init__(settings, node=node)
        with self.config_table() as table:
            self.configure(table)
        self._nursery: trio.Nursery | None = None
        self._spawner = SpawnThread(f"huselet-{self.name}-spawner")

    # --- hooks -------------------------------------------------------------------

    def configure(self, table: ConfigTable) -> None:
        """Read this runtime's own keys from its table (a ConfigError names the key)."""

    async def prepare(self) -> None:
        """Check and set up the host before serving; raise RuntimeConfigError if it cannot."""

    def serve(self, nursery: trio.Nursery) -> None:
        """Start the runtime's background tasks (called once, before the first start)."""

    async def shutdown(self) -> None:
        """The daemon is going away: kill and reap every instance, remove what was made."""

    def uid_allocator(self) -> UidAllocator | None:
        """Where this runtime's function uids come from; None if it runs them as itself."""
        return None

    # --- lifecycle ---------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        await self.prepare()
        uids = self.uid_allocator()
        if uids is not None:
            uids.open_leases()  # a RuntimeConfigError here stops the daemon's start, typed
        self._spawner.start()
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                self.serve(nursery)
                task_status.started()
                await trio.sleep_forever()
        finally:
            self._nursery = None
            try:
                with trio.CancelScope(shield=True), trio.move_on_after(self.shutdown_s):
                    await self.shutdown()
            finally:
                # Last: its end sends the parent-death signal to anything still alive.
                self._spawner.stop()
                if uids is not None:
                    uids.close_leases()  # no instance of ours runs as them any more

    def running(self) -> trio.Nursery:
        """The runtime's nursery; a start on a runtime that is not running fails typed."""
        if self._nursery is None:
            raise StartFailed(f"the {self.name} runtime is not running")
        return self._nursery

    # --- spawning ----------------------------------------------------------------

    async def popen(self, argv: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        """``subprocess.Popen`` on the spawner thread; the event loop serves meanwhile.

        The child is reaped by a :class:`ChildHandle`, never by ``Popen``
        (its ``returncode`` is set so ``Popen.__del__`` leaves it alone).
        """
        popen: subprocess.Popen[bytes] = await self._spawner.run(
            lambda: subprocess.Popen(argv, **kwargs)
        )
        popen.returncode = 0
        return popen

    async def spawn_instance(
        self, argv: list[str], **kwargs: Any
    ) -> tuple[subprocess.Popen[bytes], trio.Nursery]:
        """:meth:`popen` for an instance, and the nursery to supervise it in.

        The runtime may have stopped while the spawn ran: then the child is
        killed and reaped here, and the start fails typed.
        """
        popen = await self.popen(argv, **kwargs)
        if self._nursery is None:
            child = ChildHandle("stopped", popen.pid)
            await child.kill_and_reap()
            raise StartFailed(f"the {self.name} runtime is not running")
        return popen, self._nursery

    @staticmethod
    async def pump_and_reap(
        handle: ChildHandle, popen: subprocess.Popen[bytes], fields: dict[str, Any], logger: Any
    ) -> None:
        """Forward the child's stdout and stderr into the log (one output budget for
        both) until it is reaped; a descendant that keeps a pipe open is not waited for."""
        async with trio.open_nursery() as nursery:
            limiter = OutputLimiter()
            for pipe, name in ((popen.stdout, "stdout"), (popen.stderr, "stderr")):
                if pipe is not None:
                    nursery.start_soon(pump_output, take_fd(pipe), name, fields, logger, limiter)
            await handle.reap()
            nursery.cancel_scope.deadline = trio.current_time() + OUTPUT_DRAIN_S


def sandbox_plan(
    fn: FunctionSettings, staging: Path, ro_paths: tuple[str, ...], uid: int | None, **how: Any
) -> SandboxPlan:
    """The confinement plan of one function's sandbox (``how``: the runtime's settings)."""
    how["nproc"] = uid_nproc(fn, how.get("nproc"))
    return SandboxPlan(
        function=fn.name,
        package=str(fn.package),
        handler=fn.handler,
        staging=str(staging),
        ro_paths=ro_paths,
        uid=uid,
        gid=uid,
        daemon_pid=os.getpid(),
        **how,
    )


def take_fd(pipe: Any) -> int:
    """A descriptor of ``pipe`` the caller owns (the ``Popen`` file object is closed)."""
    fd = os.dup(pipe.fileno())
    pipe.close()
    return fd


class SandboxRuntime(ChildRuntime):
    """Base of the namespace/cgroup runtimes: isolation keys, uids, the cgroup pool."""

    def __init__(self, settings: Mapping[str, Any], *, node: Any) -> None:
        super().__init__(settings, node=node)
        self._uids = UidAllocator(self.isolation.uid_base, self.isolation.uid_count)
        self._cgroups: CgroupPool | None = None

    def configure(self, table: ConfigTable) -> None:
        self.isolation: IsolationSettings = parse_isolation(table)

    async def probe(self) -> HostFeatures:
        """What the host provides; the settings resolved against it (or refused).

        On a worker thread: the probe spawns a process (a user-namespace test).
        """
        host = await trio.to_thread.run_sync(probe_host, self.isolation)
        self.isolation = resolve(self.isolation, host, self.name)
        return host

    def cgroup_subtree(self, host: Any) -> str:
        """This daemon's own cgroup subtree for this runtime (:mod:`huselet.runtime.identity`)."""
        return sandbox_subtree(host, self.isolation.cgroup_parent, self.node, self.name)

    async def open_cgroup_pool(self, host: HostFeatures) -> None:
        """Create the pool of instance cgroups, when the settings use cgroups."""
        if not self.isolation.cgroups:
            return
        assert host.cgroups is not None
        self._cgroups = CgroupPool(
            host.cgroups,
            self.cgroup_subtree(host.cgroups),
            target_free=self.isolation.cgroup_pool,
            pids_max=self.isolation.pids_max,
            cpu_cores=self.isolation.cpu_cores or None,
        )
        await self._cgroups.setup()

    async def refill_cgroups(self) -> None:
        """Top the pool up to its target (a failure is logged; starts mkdir inline)."""
        if self._cgroups is None:
            return
        try:
            await self._cgroups.refill()
        except OSError as exc:
            log.warning("cannot pre-create cgroups", runtime=self.name, error=exc.strerror)

    async def keep_cgroups_filled(self) -> None:
        """Pre-create instance cgroups off the start path, once a second."""
        while True:
            # With the health loops' wake-ups (every idle tick on an idle node).
            await sleep_on_grid(CGROUP_REFILL_S, stretch=True)
            await self.refill_cgroups()

    def uid_allocator(self) -> UidAllocator | None:
        return self._uids if self.isolation.isolation else None

    def uid_for(self, fn: FunctionSettings) -> int | None:
        """The function's helper uid; None when isolation is off (the daemon's own)."""
        return self._uids.uid_for(identity(fn)) if self.isolation.isolation else None

    async def acquire_cgroup(self, fn: FunctionSettings, owner: int | None = None) -> Cgroup | None:
        """An instance cgroup (made off the event loop when the pool ran dry); see
        :meth:`CgroupPool.acquire` for ``owner``."""
        if self._cgroups is None:
            return None
        return await self._cgroups.acquire(fn.memory_mb * MiB, owner)

    async def release_cgroup(self, cgroup: Cgroup | None) -> None:
        """Empty an instance cgroup and return it to the pool (also from cancelled scopes)."""
        if cgroup is not None and self._cgroups is not None:
            with trio.CancelScope(shield=True):
                await self._cgroups.release(cgroup)

    async def close_cgroup_pool(self) -> None:
        if self._cgroups is not None:
            await self._cgroups.close()

    def describe(self) -> dict[str, Any]:
        iso = self.isolation
        return {
            "name": self.name,
            "network": iso.network,
            "cgroups": self._cgroups.host.describe() if self._cgroups else None,
            "degraded": list(iso.degraded),
        }
