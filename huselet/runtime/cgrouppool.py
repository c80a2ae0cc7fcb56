"""The pool of instance cgroups: made ahead of need, reused, reserved per owner uid.

Starting an instance then moves a pid instead of mkdir'ing its groups (~0.2 ms
per hierarchy on v1). A burst that finds the free list empty gets groups made in
batches on a worker thread, never on the event loop; ``reserve()`` makes the
groups ``min_instances`` will take while the zygotes build. Groups acquired for
a uid are chowned to it (self-placement, see :mod:`huselet.runtime.cgroups`) and
go back only to that uid's free list. Zygotes get named groups.
"""

from __future__ import annotations

import os
from collections.abc import Collection

import trio

from huselet.runtime import identity
from huselet.runtime.cgroups import (
    REQUIRED,
    Cgroup,
    CgroupError,
    CgroupHost,
    log,
    write_control,
)

# mkdir/rmdir of instance groups: the kernel serialises them (cgroup_mutex)
# anyway; two threads keep one busy while the other hands its result back.
_MKDIR_THREADS = trio.CapacityLimiter(2)
# Groups made in one worker-thread trip when a burst finds the free list empty.
GROW_BATCH_MAX = 256
# Groups made per thread trip by reserve() (a smaller batch is usable sooner).
RESERVE_BATCH = 64
# At most this many groups are reserved at start for the functions' min_instances.
RESERVE_MAX = 8192


class CgroupPool:
    """Pre-created instance cgroups under ``<parent>/<runtime>`` plus named zygote groups."""

    def __init__(
        self,
        host: CgroupHost,
        subtree: str,
        *,
        target_free: int,
        pids_max: int | None,
        cpu_cores: float | None,
    ) -> None:
        self.host = host
        self.subtree = subtree.strip("/")
        self.target_free = target_free
        self.pids_max = pids_max
        self.cpu_cores = cpu_cores
        self._free: list[Cgroup] = []  # no owner yet
        self._owned: dict[int, list[Cgroup]] = {}  # released groups, by owner uid
        self._owned_count = 0
        self._used: set[Cgroup] = set()
        self._named: dict[str, Cgroup] = {}
        self._counter = 0
        self._wanting = 0  # acquirers waiting for a group
        self._growing: trio.Event | None = None  # set when the batch being made is in

    # --- lifecycle --------------------------------------------------------------

    async def setup(self) -> None:
        """Clear leftovers of a previous run, create the subtree and the first groups."""
        if self.host.version == 2:
            try:
                identity.enter_daemon_leaf(self.host)
            except OSError as exc:
                raise CgroupError(
                    f"cannot move the daemon into its own leaf cgroup ({exc.strerror}); "
                    "run it with Delegate=yes or in the root group"
                ) from None
        await self.remove_subtree()
        parts = self.subtree.split("/")
        for i in range(1, len(parts) + 1):
            Cgroup(self.host, "/".join(parts[:i])).create()
            if self.host.version == 2:
                self._enable_controllers("/".join(parts[: i - 1]))
        if self.host.version == 2:
            self._enable_controllers(self.subtree)
        for _ in range(self.target_free):
            self._free.append(self._new_instance_group())

    def _enable_controllers(self, rel: str) -> None:
        path = self.host.roots["unified"] / rel / "cgroup.subtree_control"
        enabled = path.read_text().split()
        missing = [c for c in REQUIRED if c not in enabled]
        if missing:
            write_control(path, " ".join(f"+{c}" for c in missing))

    async def remove_subtree(self) -> None:
        """Kill and remove everything under the subtree (deepest first)."""
        for root in self.host.roots.values():
            base = root / self.subtree
            if not base.is_dir():
                continue
            # The start-up sweep runs once, before anything is served.
            for dirpath, _dirnames, _ in sorted(os.walk(base), key=lambda t: -len(t[0])):
                rel = os.path.relpath(dirpath, root)  # noqa: ASYNC240
                group = Cgroup(self.host, rel)
                await group.kill_all()
                try:
                    os.rmdir(dirpath)
                except FileNotFoundError:
                    pass
                except OSError as exc:
                    log.warning("cannot remove cgroup", path=dirpath, error=exc.strerror)

    async def close(self) -> None:
        self._free.clear()
        self._owned.clear()
        self._owned_count = 0
        self._used.clear()
        self._named.clear()
        await self.remove_subtree()
        # Parents above our subtree are shared with other runtimes: remove if empty.
        parts = self.subtree.split("/")[:-1]
        for i in range(len(parts), 0, -1):
            Cgroup(self.host, "/".join(parts[:i])).remove_quietly()

    # --- instance groups ----------------------------------------------------------

    def _new_instance_group(self) -> Cgroup:
        self._counter += 1
        group = Cgroup(self.host, f"{self.subtree}/i-{self._counter}")
        self._prepare(group)
        return group

    def _prepare(self, group: Cgroup) -> None:
        fresh = group.create()
        group.set_pids(self.pids_max)
        group.set_cpu(self.cpu_cores, fresh=fresh)

    async def acquire(self, memory_bytes: int, owner: int | None = None) -> Cgroup:
        """A group for one instance: from the free list, else made in a worker thread.

        Never mkdir on the event loop: a burst of 2,000 starts used to make
        ~1,900 groups inline (0.3-10 ms each on a v1 host), stalling the whole
        loop for seconds. Acquirers that find the list empty wait for one
        batch made for all of them (one thread trip, not one per start).
        With ``owner`` (a uid), the group is that uid's (see :meth:`Cgroup.own`):
        one it had before, else a fresh one chowned now (three chowns).
        """
        while True:
            mine = self._owned.get(owner) if owner is not None else None
            if mine:  # its own, from before or reserved for it
                group = mine.pop()
                self._owned_count -= 1
                break
            if self._free:
                group = self._free.pop()
                if owner is not None:
                    try:
                        group.own(owner)
                    except OSError:
                        self._free.append(group)  # still nobody's: usable by the next start
                        raise
                break
            self._wanting += 1
            try:
                await self._grow()
            finally:
                self._wanting -= 1
        group.set_memory(memory_bytes)  # one write; none when the limit is unchanged
        self._used.add(group)
        return group

    async def _grow(self) -> None:
        if self._growing is not None:
            await self._growing.wait()
            return
        # One for everyone waiting now (the rest of the burst), the pool's target at least.
        await self._grow_by(min(GROW_BATCH_MAX, max(self._wanting, self.target_free)))

    async def _grow_by(
        self, count: int, owner: int | None = None, memory_bytes: int | None = None
    ) -> None:
        self._growing = trio.Event()
        try:
            await self._make(count, owner, memory_bytes)
        finally:
            self._growing.set()
            self._growing = None

    async def reserve(
        self, count: int, owner: int | None = None, memory_bytes: int | None = None
    ) -> None:
        """Make groups until ``count`` are free (``owner``'s, chowned in the thread too),
        ahead of a burst known to come; with ``memory_bytes`` (the limit the burst's
        starts will ask for) also written there, not once per start on the event loop.

        In batches of :data:`RESERVE_BATCH`, one worker-thread trip each:
        starts take groups from each batch as soon as it is in, instead of
        waiting, pool empty, for a batch made only once they ask.
        """
        have = len(self._free) if owner is None else len(self._owned.get(owner, ()))
        missing = count - have
        while missing > 0:
            while self._growing is not None:
                await self._growing.wait()
            batch = min(RESERVE_BATCH, missing)
            await self._grow_by(batch, owner, memory_bytes)
            missing -= batch

    async def _make(
        self, count: int, owner: int | None = None, memory_bytes: int | None = None
    ) -> None:
        groups = []
        for _ in range(count):
            self._counter += 1
            groups.append(Cgroup(self.host, f"{self.subtree}/i-{self._counter}"))
        made: list[Cgroup] = []

        def prepare_all() -> None:
            for group in groups:
                self._prepare(group)
                if memory_bytes is not None:
                    group.set_memory(memory_bytes)  # acquire() then writes none
                if owner is not None:
                    group.own(owner)
                made.append(group)

        try:
            await trio.to_thread.run_sync(prepare_all, limiter=_MKDIR_THREADS)
        finally:
            # What was made before a failure is usable.
            if owner is None:
                self._free.extend(made)
            else:
                self._owned.setdefault(owner, []).extend(made)
                self._owned_count += len(made)

    async def release(
        self, group: Cgroup, spare: Collection[int] = (), *, reuse: bool = True
    ) -> None:
        """Empty ``group`` (never signalling ``spare``, see :meth:`Cgroup.kill_all`), keep it.

        ``reuse=False``: remove it instead (a start failed in it: whatever
        broke it must not fail the next start too).
        """
        self._used.discard(group)
        emptied = await group.kill_all(spare=spare)
        group.oom_baseline = group.oom_kills()
        kept = len(self._free) + self._owned_count
        if emptied and reuse and kept < 4 * self.target_free:
            if group.owner is None:
                self._free.append(group)
            else:  # never to another uid
                self._owned.setdefault(group.owner, []).append(group)
                self._owned_count += 1
        elif emptied:
            # rmdir waits for the kernel to offline the group: not on the event loop.
            await trio.to_thread.run_sync(group.remove, limiter=_MKDIR_THREADS)
        else:
            log.warning("cgroup did not empty; abandoning it", cgroup=group.rel)

    async def refill(self) -> None:
        """Top the free list up, off the start path (mkdir runs in a worker thread)."""
        missing = self.target_free - len(self._free)
        if missing > 0:
            await self._make(missing)

    @property
    def free_count(self) -> int:
        return len(self._free)

    # --- named groups (zygotes) -----------------------------------------------------

    def named(self, name: str, *, memory_bytes: int, pids_max: int | None) -> Cgroup:
        group = self._named.get(name)
        if group is None:
            group = Cgroup(self.host, f"{self.subtree}/{name}")
            self._named[name] = group
        # Every (re)build: the group may have been removed behind our back
        # (then its limits are gone too and must be written again).
        if not group._mem_dir.is_dir():
            group.memory_bytes = None
        group.create()
        group.set_memory(memory_bytes)
        group.set_pids(pids_max)
        return group

    async def drop_named(self, name: str) -> None:
        group = self._named.pop(name, None)
        if group is not None:
            await group.kill_all()
            group.remove()
