"""The ``oci`` runtime: each instance is an OCI container run by runc (or crun).

For operators who standardise on OCI runtimes (or want a drop-in like
gVisor's ``runsc``: set ``[runtimes.oci] binary``). Slowest to start — an
exec of the runtime binary, its init, then a fresh interpreter.

Per function, a shared read-only root directory (runc needs a real rootfs
directory, not ``/``) whose contents are only mount points; per instance, a
bundle directory holding ``config.json`` (:mod:`huselet.runtime.ocispec`):
the same view as the other sandboxes — read-only binds of the Python
installation, the ``huselet``/``protocol`` packages and the function's
package, private ``/tmp``, fresh ``/proc`` and ``/dev`` — new PID, IPC, UTS,
mount and (by default) network namespaces, the function's unprivileged uid,
no capabilities, ``noNewPrivileges``, the seccomp deny list, and memory,
pids and CPU limits on the cgroup ``<parent>/oci/<instance>``, which runc
creates and fills.

The link is handed over as an inherited, connected socket
(``--preserve-fds 1``: fd 3). ``runc run --detach`` exits once the container
runs; its process then is an orphan. To reap it — its true exit status and an
end with no zombie — the daemon marks itself a *child subreaper* while this
runtime runs, so the container process is re-parented to the daemon, which
watches it through a pidfd. Afterwards: the cgroup's OOM counter, then
``runc delete --force`` and the bundle is removed.

crun refuses hybrid (v1) cgroup hosts; it works on pure v2 hosts by name.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import trio

from huselet.config.table import ConfigTable
from huselet.log import get_logger
from huselet.runtime.base import InstanceHandle, InstanceSpec, RuntimeConfigError, StartFailed
from huselet.runtime.cgroups import Cgroup, remove_empty_tree
from huselet.runtime.children import (
    ChildHandle,
    SandboxHandle,
    StrayReaper,
    dial_link,
    pump_output,
)
from huselet.runtime.common import SandboxRuntime, take_fd
from huselet.runtime.ocispec import container_config
from huselet.sandbox import linux
from huselet.timegrid import sleep_on_grid

log = get_logger("runtime.oci")

PR_SET_CHILD_SUBREAPER = 36
RUNC_TIMEOUT_S = 30.0
STRAY_SWEEP_S = 5.0
ORPHAN_REAP_S = 5.0  # how long a deleted, never-watched container may take to exit
LINK_FD = 3


def _make_preexec(link_fd: int) -> Callable[[], None]:
    def preexec() -> None:  # in the child between fork and exec
        os.dup2(link_fd, LINK_FD)  # runc --preserve-fds 1 hands over fd 3
        linux.set_pdeathsig(signal.SIGKILL)
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

    return preexec


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text())
    except (OSError, ValueError):
        return None


async def _reap_child(pid: int, timeout_s: float = ORPHAN_REAP_S) -> None:
    """Reap ``pid`` if it is (or becomes, within ``timeout_s``) our zombie child."""
    with trio.move_on_after(timeout_s):
        while True:
            try:
                # WNOHANG: never blocks.
                if os.waitpid(pid, os.WNOHANG)[0]:  # noqa: ASYNC222
                    return
            except ChildProcessError:
                return  # not ours (never re-parented to us) or already reaped
            await trio.sleep(0.02)


class OciRuntime(SandboxRuntime):
    name = "oci"
    shutdown_s = 30.0

    def __init__(self, settings: Mapping[str, Any], *, node: Any) -> None:
        super().__init__(settings, node=node)
        self._runc: str | None = None
        self._dir = Path(node.run_dir) / "oci"
        self._state = self._dir / "state"
        self._handles: dict[str, SandboxHandle] = {}
        self._cgroup_host: Any = None

    def configure(self, table: ConfigTable) -> None:
        super().configure(table)
        self.binary = table.string("binary", "runc", non_empty=True)

    async def prepare(self) -> None:
        self._runc = shutil.which(self.binary)
        if self._runc is None:
            raise RuntimeConfigError(f"runtimes.{self.name}.binary: {self.binary!r} not found")
        if os.geteuid() != 0:
            raise RuntimeConfigError(f"runtimes.{self.name}: runc needs the daemon to run as root")
        host = await self.probe()
        self._cgroup_host = host.cgroups if self.isolation.cgroups else None
        self._dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        await self._delete_leftovers()
        # See the module docstring: containers detach from runc and must be ours to reap.
        linux.prctl(PR_SET_CHILD_SUBREAPER, 1)

    def serve(self, nursery: trio.Nursery) -> None:
        nursery.start_soon(self._sweep_strays)

    async def shutdown(self) -> None:
        for instance_id, handle in list(self._handles.items()):
            await handle.kill_and_reap()
            await self._delete(instance_id)
        shutil.rmtree(self._dir, ignore_errors=True)
        remove_empty_tree(self._cgroup_subtree())
        # No container is left to reap: orphans go to init again, not to a
        # process that no longer sweeps them (an in-process stack, a test).
        linux.prctl(PR_SET_CHILD_SUBREAPER, 0)

    def _cgroup_subtree(self) -> str:
        return self.cgroup_subtree(self._cgroup_host)

    async def _sweep_strays(self) -> None:
        strays = StrayReaper()
        while True:
            await sleep_on_grid(STRAY_SWEEP_S)
            strays.sweep({h.pid for h in self._handles.values()})

    async def _runc_cmd(self, *args: str, timeout_s: float = RUNC_TIMEOUT_S) -> int:
        assert self._runc is not None
        argv = [self._runc, "--root", str(self._state), *args]
        with trio.move_on_after(timeout_s):
            result = await trio.run_process(
                argv, check=False, capture_stdout=True, capture_stderr=True
            )
            return result.returncode
        return -1

    async def _delete_leftovers(self) -> None:
        """Containers of a previous daemon run (killed with SIGKILL) are removed."""
        if not self._state.is_dir():
            return
        for entry in self._state.iterdir():
            await self._runc_cmd("delete", "--force", entry.name)

    async def _abandon(self, instance_id: str, launcher: ChildHandle, bundle: Path) -> None:
        """Undo a start that gave up: its runc, its container, and the container's process.

        The container's process is our child (subreaper) once runc is gone:
        it is reaped here rather than left a zombie for a sweep that may
        never come (the runtime may be stopping)."""
        with trio.CancelScope(shield=True):
            # Let runc finish what it began: killed mid-create, it orphans the
            # container's init before anyone knows its pid (nothing left to reap by).
            with trio.move_on_after(RUNC_TIMEOUT_S):
                await launcher.reap()
            if launcher.status is None:
                await launcher.kill_and_reap()
            orphan = _read_pid(bundle / "pid") or await self._container_pid(instance_id)
            await self._delete(instance_id)
            if orphan:
                await _reap_child(orphan)

    async def _container_pid(self, instance_id: str) -> int | None:
        """The pid ``runc state`` knows for a container (None: no such container)."""
        assert self._runc is not None
        with trio.move_on_after(RUNC_TIMEOUT_S):
            result = await trio.run_process(
                [self._runc, "--root", str(self._state), "state", instance_id],
                check=False,
                capture_stdout=True,
                capture_stderr=True,
            )
            try:
                pid = json.loads(result.stdout).get("pid")
            except (ValueError, AttributeError):
                return None
            return pid if isinstance(pid, int) and pid > 0 else None
        return None

    async def _delete(self, instance_id: str) -> None:
        await self._runc_cmd("delete", "--force", instance_id)
        shutil.rmtree(self._dir / "bundles" / instance_id, ignore_errors=True)

    def _rootfs(self, function: str) -> Path:
        path = self._dir / "rootfs" / function
        path.mkdir(mode=0o755, parents=True, exist_ok=True)
        return path

    async def start(self, spec: InstanceSpec) -> InstanceHandle:
        nursery = self.running()
        fn = spec.function
        deadline = trio.current_time() + fn.start_timeout_ms / 1000
        uid = self.uid_for(fn) or 0
        bundle = self._dir / "bundles" / spec.instance_id
        bundle.mkdir(mode=0o700, parents=True)
        cgroup_rel = f"{self._cgroup_subtree()}/{spec.instance_id}"
        config = container_config(
            spec,
            rootfs=self._rootfs(fn.name),
            uid=uid,
            iso=self.isolation,
            cgroup_path="/" + cgroup_rel if self._cgroup_host else None,
            link_fd=LINK_FD,
        )
        (bundle / "config.json").write_text(json.dumps(config))
        link = await dial_link(spec.link_socket, deadline)
        assert self._runc is not None
        argv = [self._runc, "--root", str(self._state), "run", "--detach", "--preserve-fds", "1"]
        argv += ["--pid-file", str(bundle / "pid"), "--bundle", str(bundle), spec.instance_id]
        try:
            # Reaped by the launcher handle below, never by Popen.
            runc = await self.popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                pass_fds=(LINK_FD, link.fileno()),
                close_fds=True,
                preexec_fn=_make_preexec(link.fileno()),
            )
        except (OSError, subprocess.SubprocessError) as exc:
            shutil.rmtree(bundle, ignore_errors=True)
            why = exc.strerror if isinstance(exc, OSError) else str(exc)
            raise StartFailed(f"could not run {self.binary}: {why}") from None
        finally:
            link.close()
        fields = {"instance": spec.instance_id, "function": fn.name}
        nursery.start_soon(pump_output, take_fd(runc.stdout), "output", fields, log)
        launcher = ChildHandle(f"runc-{spec.instance_id}", runc.pid)
        try:
            with trio.move_on_at(deadline):
                await launcher.reap()
        except BaseException:
            # Cancelled (the pool stops this instance, the node is stopping):
            # runc goes on creating a container nobody will watch. Undo it off
            # this path, or at least stop runc.
            try:
                nursery.start_soon(self._abandon, spec.instance_id, launcher, bundle)
            except RuntimeError:
                launcher.kill()
            raise
        status = launcher.status
        if status is None or status.code != 0:
            # Cleaned up off the start's path: deleting a container whose runc
            # was killed mid-create can take runc's whole timeout, and the
            # start's caller must hear of the failure now, not then.
            nursery.start_soon(self._abandon, spec.instance_id, launcher, bundle)
            raise StartFailed(f"{self.binary} could not start the container")
        try:
            pid = int((bundle / "pid").read_text())
            pidfd = os.pidfd_open(pid)
        except (OSError, ValueError):
            await self._delete(spec.instance_id)
            raise StartFailed("the container exited before it could be watched") from None
        cgroup = Cgroup(self._cgroup_host, cgroup_rel) if self._cgroup_host else None
        handle = SandboxHandle(spec.instance_id, pid, cgroup, pidfd)
        self._handles[spec.instance_id] = handle
        nursery.start_soon(self._supervise, handle)
        return handle

    async def _supervise(self, handle: SandboxHandle) -> None:
        try:
            await handle.reap()  # OOM is read from the cgroup before runc deletes it
        finally:
            self._handles.pop(handle.instance_id, None)
            if handle.status is None:
                await handle.kill_and_reap()
            with trio.CancelScope(shield=True):
                await self._delete(handle.instance_id)

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            # runc creates and fills the instance cgroups (no pool of ours).
            "cgroups": self._cgroup_host.describe() if self._cgroup_host else None,
            "binary": self._runc or self.binary,
            "instances": len(self._handles),
        }
