"""The ``fork`` runtime: instances forked from a pre-initialised zygote per function.

The fast path. A start costs one ``clone`` of a small, frozen Python process
that already imported the worker SDK and the function (its init code has
run), plus the per-instance confinement — instead of exec'ing an interpreter
and importing everything again.

One start (:meth:`ForkRuntime.start`):

1. wait (with the start deadline) for the function's zygote — one per
   function and code: built at :meth:`run` for the functions given to
   :meth:`expect` when ``zygotes = "eager"``, from the code requests get
   (:attr:`code`: the packed image), else on first use; rebuilt if it dies;
2. take a pre-created cgroup from the pool and set the function's memory limit;
3. dial the function's link socket *for* the instance and make its output
   pipe; send the zygote the two descriptors with the instance id and token
   (in-process: never in the environment);
4. the zygote enters the instance's cgroup, clones the child with
   ``CLONE_PARENT`` — it is born the daemon's own child, in its own cgroup —
   goes back to its cgroup and reports the pid. On cgroup v1 with a function
   uid the zygote moves itself (the group's ``cgroup.procs`` belong to that
   uid; :meth:`ZygoteProcess.fork_into`), so starts are not serialised
   behind one another and cost the daemon no thread trip; otherwise the
   daemon moves it, one start at a time (:meth:`ZygoteProcess.fork_placed`);
5. check the pid really is our child in that cgroup (the zygote runs
   function code: nothing it says is trusted) and open a pidfd.

Exit: the pidfd turns readable, ``wait4`` gives the real status and rusage,
the cgroup's ``oom_kill`` counter says whether memory ran out, the cgroup is
emptied and returned to the pool. The isolation itself is described in
:mod:`huselet.sandbox.confine`.

Table ``[runtimes.fork]``: the isolation keys of
:mod:`huselet.runtime.isolation`, plus ``zygotes`` ("eager"/"lazy"),
``zygote_memory_mb`` (each zygote's cgroup limit), ``zygote_budget_mb`` (all
zygotes together; least recently used ones are evicted beyond it) and
``zygote_start_timeout_ms``.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import trio

from huselet.config import FunctionSettings
from huselet.config.table import ConfigTable
from huselet.errors import HuseletError
from huselet.log import get_logger
from huselet.runtime.base import InstanceHandle, InstanceSpec, StartFailed
from huselet.runtime.cgrouppool import RESERVE_MAX
from huselet.runtime.cgroups import Cgroup
from huselet.runtime.children import (
    SandboxHandle,
    StrayReaper,
    dial_link,
    is_our_child,
    reap_orphan,
)
from huselet.runtime.children import log as log_of_output
from huselet.runtime.codeimage import code_key, code_ro_paths
from huselet.runtime.common import MiB, SandboxRuntime, sandbox_plan
from huselet.runtime.fdwatch import FdWatcher, WatchedOutput
from huselet.runtime.hostlimits import raise_nofile_limit, start_failure
from huselet.runtime.isolation import identity, uid_nproc
from huselet.runtime.output import OutputLimiter, OutputLines
from huselet.runtime.zygote import ZygoteProcess
from huselet.runtime.zygoteslot import ZygoteSlot, retire_replaced
from huselet.sandbox.confine import SandboxPlan
from huselet.timegrid import sleep_on_grid

log = get_logger("runtime.fork")

MAINTAIN_INTERVAL_S = 1.0
STRAY_SWEEP_S = 5.0
OUTPUT_DRAIN_S = 1.0  # after an instance's exit, how long its output pipe may stay open
ZYGOTE_ESTIMATE_BYTES = 48 * MiB  # budget estimate for a zygote not yet measured
# Isolation settings a zygote's plan takes as they are.
PLAN_SETTINGS = ("network", "seccomp", "tmp_size_mb", "nofile", "nproc")
# How long an eager zygote waits for its function's code (a pack may run pip).
EAGER_CODE_WAIT_S = 300.0


class ForkRuntime(SandboxRuntime):
    name = "fork"

    def __init__(self, settings: Mapping[str, Any], *, node: Any) -> None:
        super().__init__(settings, node=node)
        self._expected: list[FunctionSettings] = []
        self._slots: dict[tuple[Any, ...], ZygoteSlot] = {}
        self._slot_names: dict[tuple[Any, ...], str] = {}
        # Per function, the slot of its newest code: older code's zygotes retire.
        self._newest: dict[str, tuple[Any, ...]] = {}
        self._handles: dict[int, SandboxHandle] = {}
        self._staging = Path(node.run_dir) / "sandbox" / self.name
        self._strays = StrayReaper()
        # Every instance's exit and output, watched by one task (not two per instance).
        self._fds = FdWatcher()
        self.starts = 0
        # Starts asked for and zygotes made: _maintain checks the zygote budget
        # only when this (or a zygote's build) moved since its last check.
        self._activity = 0
        self._checked: tuple[Any, ...] | None = None
        self.maintain_passes = 0  # housekeeping passes so far (tests wait on it)

    def configure(self, table: ConfigTable) -> None:
        super().configure(table)
        self.zygote_mode = table.choice("zygotes", ("eager", "lazy"), default="eager")
        self.zygote_memory = table.positive_int("zygote_memory_mb", default=256, minimum=16) * MiB
        self.zygote_budget = table.positive_int("zygote_budget_mb", default=2048, minimum=16) * MiB
        self.zygote_start_timeout_s = (
            table.positive_int("zygote_start_timeout_ms", default=30_000, minimum=100) / 1000
        )

    def expect(self, functions: Sequence[FunctionSettings]) -> None:
        self._expected = list(functions)

    # --- lifecycle ----------------------------------------------------------------

    async def prepare(self) -> None:
        host = await self.probe()
        raise_nofile_limit()
        self._staging.mkdir(mode=0o700, parents=True, exist_ok=True)
        await self.open_cgroup_pool(host)

    def serve(self, nursery: trio.Nursery) -> None:
        if self.zygote_mode == "eager":
            for fn in self._expected:
                nursery.start_soon(self._build_eager, fn)
        nursery.start_soon(self._reserve_cgroups)
        nursery.start_soon(self._maintain)
        nursery.start_soon(self._fds.run)

    async def _reserve_cgroups(self) -> None:
        """Make the groups the functions' ``min_instances`` will take, while zygotes build.

        Those starts come at once: with the groups made ahead, they do not
        wait for one batch after another made only once the pool ran dry.
        """
        if self._cgroups is None:
            return
        # Per uid (a self-placing zygote's groups are chowned in the thread), limited
        # as the function wanting most asks (a start wanting another writes its own).
        wanted: dict[int | None, int] = {}
        memory: dict[int | None, tuple[int, int]] = {}  # uid -> (min_instances, bytes)
        for fn in self._expected:
            try:
                uid = self.uid_for(fn) if self._cgroups.host.version == 1 else None
            except StartFailed:
                continue  # no uid left (e.g. leased by other daemons): its starts say so
            wanted[uid] = wanted.get(uid, 0) + fn.min_instances
            memory[uid] = max(memory.get(uid, (0, 0)), (fn.min_instances, fn.memory_mb * MiB))
        budget = RESERVE_MAX
        try:
            for uid, count in wanted.items():
                count = min(count, budget)
                budget -= count
                if count > (self.isolation.cgroup_pool if uid is None else 0):
                    await self._cgroups.reserve(count, uid, memory[uid][1])
        except OSError as exc:
            log.warning("cannot pre-create cgroups", error=exc.strerror)

    async def shutdown(self) -> None:
        # The daemon is going away: leave no process, cgroup or directory behind.
        for slot in self._slots.values():
            slot.close()
        for handle in list(self._handles.values()):
            await handle.kill_and_reap()
        self._handles.clear()
        self._fds.close()
        await self.close_cgroup_pool()
        shutil.rmtree(self._staging, ignore_errors=True)

    async def _build_eager(self, fn: FunctionSettings) -> None:
        """Build a function's zygote at start, from the very code its requests get.

        With packed code that is the image, not the package directory: one zygote per
        function and code, and the first request finds it ready. The code is held until
        the zygote is ready (so it cannot be evicted mid-build); instances hold their own.
        """
        if self.code is None:  # no code cache (tests, embedders): the package directory
            try:
                self._slot(fn, None)
            except StartFailed as exc:  # e.g. no uid left: the first start says so too
                log.warning("eager zygote not built", function=fn.name, error=str(exc))
            return
        deadline = trio.current_time() + EAGER_CODE_WAIT_S
        try:
            with trio.fail_after(EAGER_CODE_WAIT_S):
                code = await self.code.acquire(fn)
        except (HuseletError, OSError, trio.TooSlowError) as exc:
            # Not fatal: the first start builds it (and reports why it cannot).
            log.warning("no code for an eager zygote", function=fn.name, error=str(exc))
            return
        try:
            await self._slot(fn, code.image).ready(deadline)
        except StartFailed as exc:
            log.warning("eager zygote not ready", function=fn.name, error=str(exc))
        finally:
            code.release()

    # --- zygotes ------------------------------------------------------------------

    def _plan(
        self, fn: FunctionSettings, image: Any, staging: Path, uid: int | None
    ) -> SandboxPlan:
        iso = self.isolation
        return sandbox_plan(
            fn,
            staging,
            iso.ro_paths + code_ro_paths(image),
            uid,
            isolate=iso.isolation,
            # Without a cgroup the address-space rlimit is the only memory bound.
            address_space_bytes=None if iso.cgroups else fn.memory_mb * MiB,
            **{k: getattr(iso, k) for k in PLAN_SETTINGS},
        )

    def _slot(self, fn: FunctionSettings, image: Any) -> ZygoteSlot:
        # The tenant is part of the key: a function that changes owner never
        # gets the previous owner's zygote (nor its network namespace).
        key = (
            identity(fn),
            str(fn.package),
            fn.handler,
            fn.kind.value,
            code_key(image),
            tuple(sorted(fn.env.items())),
        )
        slot = self._slots.get(key)
        if slot is not None and not slot.closed:
            return slot
        assert self._nursery is not None
        self._enforce_budget(ZYGOTE_ESTIMATE_BYTES)
        name = f"z-{fn.name}-{len(self._slot_names) + 1}"
        uid = self.uid_for(fn)
        self._slot_names[key] = name

        def make(generation: int) -> ZygoteProcess:
            staging = self._staging / name
            staging.mkdir(mode=0o755, exist_ok=True)
            cgroup = None
            placer = None
            if self._cgroups is not None:
                cgroup = self._cgroups.named(
                    name,
                    memory_bytes=self.zygote_memory,
                    pids_max=uid_nproc(fn, self.isolation.nproc),
                )
                if uid is not None and self._cgroups.host.version == 1:
                    cgroup.own(uid)  # it returns here by itself after each clone
                    placer = uid
            return ZygoteProcess(
                f"{name}.{generation}",
                fn,
                self._plan(fn, image, staging, uid),
                cgroup,
                image=image,
                on_orphan=self._reap_orphan,
                spawn=self.popen,
                placer_uid=placer,
            )

        slot = ZygoteSlot(key, make)
        self._slots[key] = slot
        self._activity += 1
        if image is not None:
            self._newest[fn.name] = key
        self._nursery.start_soon(self._run_slot, slot, name)
        return slot

    async def _run_slot(self, slot: ZygoteSlot, name: str) -> None:
        try:
            await slot.run(self.zygote_start_timeout_s)
        finally:
            if self._slots.get(slot.key) is slot:
                del self._slots[slot.key]
            with trio.CancelScope(shield=True):
                if self._cgroups is not None:
                    await self._cgroups.drop_named(name)
                shutil.rmtree(self._staging / name, ignore_errors=True)

    def _enforce_budget(self, incoming: int) -> None:
        """Evict least recently used zygotes until ``incoming`` more bytes fit the budget."""
        live = [s for s in self._slots.values() if not s.closed and s.process is not None]
        used = sum(s.process.memory_bytes() for s in live if s.process is not None)
        for slot in sorted(live, key=lambda s: s.last_used):
            if used + incoming <= self.zygote_budget:
                break
            assert slot.process is not None
            used -= slot.process.memory_bytes()
            log.info("evicting zygote over the memory budget", zygote=slot.process.name)
            slot.close()

    # --- instances ------------------------------------------------------------------

    async def start(self, spec: InstanceSpec) -> InstanceHandle:
        self.running()  # a start needs the runtime running (it watches the instance)
        self._activity += 1
        fn = spec.function
        deadline = trio.current_time() + fn.start_timeout_ms / 1000
        zygote = await self._slot(fn, spec.image).ready(deadline)
        cgroup = await self.acquire_cgroup(fn, zygote.placer_uid)
        out_r: int | None = None
        handle: SandboxHandle | None = None
        try:
            request = {"id": spec.instance_id, "token": spec.token, "env": dict(spec.env)}
            if zygote.placer_uid is not None and cgroup is not None:
                # Requests queue in the zygote's socket; the pool's MAX_STARTING
                # bounds how many (and how many link connections wait).
                link = await dial_link(spec.link_socket, deadline)
                try:
                    out_r, out_w = os.pipe2(os.O_CLOEXEC)
                    try:
                        pid = await zygote.fork_into(
                            cgroup, request, [link.fileno(), out_w], deadline
                        )
                    finally:
                        os.close(out_w)
                finally:
                    link.close()
            else:
                out_r, pid = await self._fork_placed(zygote, cgroup, spec, request, deadline)
            handle = SandboxHandle(spec.instance_id, pid, cgroup, self._adopt(pid, cgroup))
            self._handles[pid] = handle
        except BaseException as exc:
            if out_r is not None:
                os.close(out_r)
            if handle is not None:
                self._handles.pop(handle.pid, None)
                await handle.kill_and_reap()
            if cgroup is not None:
                with trio.CancelScope(shield=True):
                    await self._release(cgroup, reuse=False)
            if isinstance(exc, OSError):
                log.error("fork start failed", instance=spec.instance_id, error=str(exc))
                raise start_failure(
                    "could not start the instance", exc.errno, exc.strerror or ""
                ) from None
            raise
        self.starts += 1
        fields = {"instance": spec.instance_id, "function": fn.name}
        lines = OutputLines("output", fields, log_of_output, OutputLimiter())
        output = WatchedOutput(out_r, lines, self._fds)
        handle.on_exit(lambda _status: self._exited(handle, output, cgroup))
        handle.watch_with(self._fds)
        return handle

    async def _fork_placed(
        self,
        zygote: ZygoteProcess,
        cgroup: Cgroup | None,
        spec: InstanceSpec,
        request: dict[str, Any],
        deadline: float,
    ) -> tuple[int, int]:
        """The daemon moves the zygote into ``cgroup`` for the clone: (output pipe, pid)."""
        # One start at a time per zygote: dialling inside the lock keeps a
        # burst from flooding the link socket's backlog with connections
        # whose instances are far off.
        async with zygote.placement:
            link = await dial_link(spec.link_socket, deadline)
            out_r, out_w = os.pipe2(os.O_CLOEXEC)
            try:
                target = cgroup if zygote.cgroup is not None else None
                fds = [link.fileno(), out_w]
                pid = await zygote.fork_placed(target, request, fds, deadline)
            except BaseException:
                os.close(out_r)
                raise
            finally:
                link.close()
                os.close(out_w)
                if zygote.cgroup is not None:
                    self.running().start_soon(zygote.go_home)
        return out_r, pid

    def _adopt(self, pid: int, cgroup: Cgroup | None) -> int:
        """A pidfd for ``pid`` once it is proven to be a fresh instance born in ``cgroup``."""
        try:
            pidfd = os.pidfd_open(pid)
        except ProcessLookupError:
            raise StartFailed("the forked instance vanished before it started") from None
        ok = (
            is_our_child(pidfd)
            and pid not in self._handles
            and (cgroup is None or cgroup.contains(pid))
        )
        if not ok:
            os.close(pidfd)
            log.error("zygote reported a foreign pid", pid=pid)
            raise StartFailed("the zygote reported a process that is not its instance")
        return pidfd

    def _reap_orphan(self, pid: int) -> None:
        """A child forked for a start that already gave up: kill and reap it."""
        if pid not in self._handles:
            reap_orphan(pid, self._nursery)

    def _exited(self, handle: SandboxHandle, output: WatchedOutput, cgroup: Cgroup | None) -> None:
        """An instance was reaped (by the watcher's task): drop it, then free its cgroup."""
        self._handles.pop(handle.pid, None)
        if self._nursery is None:  # the daemon is stopping: shutdown() removes the groups
            output.close()
            return
        self._nursery.start_soon(self._after_exit, output, cgroup)

    async def _after_exit(self, output: WatchedOutput, cgroup: Cgroup | None) -> None:
        try:
            # Output still buffered arrives within moments; a descendant that
            # kept the pipe open must not keep it open for longer.
            with trio.move_on_after(OUTPUT_DRAIN_S):
                await output.done.wait()
        finally:
            output.close()
            if cgroup is not None:
                with trio.CancelScope(shield=True):
                    await self._release(cgroup)

    async def _release(self, cgroup: Cgroup, *, reuse: bool = True) -> None:
        """Empty and return an instance cgroup — never killing a zygote parked in it."""
        assert self._cgroups is not None
        placers: list[int] = []
        with trio.move_on_after(5):
            for slot in list(self._slots.values()):
                process = slot.process
                if process is not None and process.placer_uid is not None and process.pid:
                    placers.append(process.pid)  # moves itself out; never killed here
                elif process is not None:
                    await process.evict_from(cgroup)
        await self._cgroups.release(cgroup, spare=placers, reuse=reuse)

    # --- housekeeping ------------------------------------------------------------------

    async def _maintain(self) -> None:
        last_sweep = trio.current_time()
        while True:
            # With the health loops' wake-ups (every idle tick on an idle node).
            await sleep_on_grid(MAINTAIN_INTERVAL_S, stretch=True)
            await self.refill_cgroups()
            # A zygote's memory grows only with what it does: with no start, no new
            # zygote and none built or rebuilt since the last pass, the budget stands
            # as it was (each check reads every zygote's memory file).
            seen = (self._activity, *(self._build_state(s) for s in self._slots.values()))
            if seen != self._checked:
                self._checked = seen
                self._enforce_budget(0)
            retire_replaced(self._slots, self._newest, trio.current_time())
            for slot in list(self._slots.values()):
                process = slot.process
                # Backstop for a start cancelled mid-way, only where the daemon moved
                # the zygote away (one that places itself goes home by itself).
                if process is not None and process.away():
                    await process.go_home()
            if trio.current_time() - last_sweep >= STRAY_SWEEP_S:
                last_sweep = trio.current_time()
                self._strays.sweep(self._handles)
            self.maintain_passes += 1

    @staticmethod
    def _build_state(slot: ZygoteSlot) -> tuple[int, bool]:
        """Which build of the slot's zygote runs, and whether it is ready (measured)."""
        return slot.generation, slot.process is not None and slot.process.is_ready

    def describe(self) -> dict[str, Any]:
        iso = self.isolation
        return {
            **super().describe(),
            "isolation": iso.isolation,
            "seccomp": iso.seccomp,
            "instances": len(self._handles),
            "starts": self.starts,
            "zygotes": [
                {
                    "key": slot.key[0],
                    "pid": slot.process.pid if slot.process else None,
                    "ready": bool(slot.process and slot.process.is_ready),
                    "generation": slot.generation,
                    "memory_mb": round(slot.process.memory_bytes() / MiB, 1)
                    if slot.process
                    else None,
                    "last_error": slot.last_error,
                }
                for slot in self._slots.values()
            ],
        }
