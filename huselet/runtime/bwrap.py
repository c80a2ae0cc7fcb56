"""The ``bwrap`` runtime: each instance is a fresh worker inside bubblewrap.

Slower to start than ``fork`` (a new interpreter per instance) but it needs
no zygote, and the sandbox is built by a small, widely reviewed tool. The
isolation matches ``fork``:

- ``--unshare-all``: new user, PID, mount, IPC, UTS and network namespaces
  (``network = "host"`` keeps the host's network); ``--die-with-parent``,
  ``--new-session``, ``--cap-drop ALL``, ``--disable-userns``;
- a read-only root made only of ``--ro-bind``\\ s: the Python installation,
  the virtual environment, the ``huselet`` and ``protocol`` packages, the
  function's own package and a few ``/etc`` files (the same list as
  :mod:`huselet.sandbox.rootfs`); a private size-limited ``/tmp``, fresh
  ``/proc`` and ``/dev``;
- no path to the daemon's sockets at all: the daemon dials the function's
  link socket itself and hands the connected socket over (``HUSELET_LINK_FD``);
- the seccomp deny list of :mod:`huselet.sandbox.seccomp` (``--seccomp FD``);
- limits: the process is moved into a pooled cgroup (memory, pids, CPU) and
  drops to the function's unprivileged uid in a pre-exec hook, before bwrap
  runs — bubblewrap itself does not do cgroups.
"""

from __future__ import annotations

import os
import resource
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import trio

from huselet.config import FunctionSettings
from huselet.config.table import ConfigTable
from huselet.log import get_logger
from huselet.runtime.base import InstanceHandle, InstanceSpec, RuntimeConfigError, StartFailed
from huselet.runtime.cgroups import Cgroup
from huselet.runtime.children import SandboxHandle, dial_link, worker_env
from huselet.runtime.codeimage import code_key, code_ro_paths
from huselet.runtime.common import MiB, SandboxRuntime
from huselet.runtime.isolation import IsolationSettings
from huselet.sandbox import linux, rootfs, seccomp

log = get_logger("runtime.bwrap")

# Packages the exec'd worker imports: everything else the daemon loaded stays out.
# "cache": the image importer of workers whose code is a package image.
WORKER_PACKAGES = ("huselet", "protocol", "cache", "msgpack")


def _make_preexec(cgroup: Cgroup | None, iso: IsolationSettings) -> Callable[[], None]:
    def preexec() -> None:  # in the child between fork and exec, still root
        if cgroup is not None:
            cgroup.join(os.getpid())
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        resource.setrlimit(resource.RLIMIT_NOFILE, (iso.nofile, iso.nofile))
        linux.set_pdeathsig(signal.SIGKILL)

    return preexec


class BwrapRuntime(SandboxRuntime):
    name = "bwrap"

    def __init__(self, settings: Mapping[str, Any], *, node: Any) -> None:
        super().__init__(settings, node=node)
        self._bwrap: str | None = None
        self._handles: set[SandboxHandle] = set()
        self._argv_cache: dict[tuple[Any, ...], tuple[list[str], str]] = {}
        self._setpriv: str | None = None
        self._seccomp = seccomp.instance_filter()

    def configure(self, table: ConfigTable) -> None:
        super().configure(table)
        self.binary = table.string("binary", "bwrap", non_empty=True)

    async def prepare(self) -> None:
        self._bwrap = shutil.which(self.binary)
        if self._bwrap is None:
            raise RuntimeConfigError(
                f"runtimes.{self.name}.binary: {self.binary!r} not found "
                "(install the bubblewrap package)"
            )
        host = await self.probe()
        if self.isolation.isolation:
            self._setpriv = shutil.which("setpriv")
            if self._setpriv is None:
                raise RuntimeConfigError(
                    f"runtimes.{self.name}: setpriv (util-linux) is needed to drop to the "
                    "function's uid inside the sandbox"
                )
        await self.open_cgroup_pool(host)

    def serve(self, nursery: trio.Nursery) -> None:
        if self._cgroups is not None:
            nursery.start_soon(self.keep_cgroups_filled)

    async def shutdown(self) -> None:
        for handle in list(self._handles):
            await handle.kill_and_reap()
        await self.close_cgroup_pool()

    def _argv(self, fn: FunctionSettings, uid: int | None, image: Any) -> tuple[list[str], str]:
        """bwrap's arguments and the command prefix that runs the worker (cached).

        With a uid (the daemon is root): bwrap runs as root *without* a user
        namespace — so it can bind paths the function's uid cannot reach (a
        Python under /root, a package below a 0700 directory) — and the
        worker is exec'd through ``setpriv``, which drops to the function's
        uid with no capabilities, bounding set or groups left. Without (an
        unprivileged daemon, degraded): bwrap makes a user namespace itself.
        """
        key = (fn.name, str(fn.package), uid, code_key(image))
        cached = self._argv_cache.get(key)
        if cached is not None:
            return cached
        iso = self.isolation
        assert self._bwrap is not None
        argv = [self._bwrap, "--unshare-pid", "--unshare-ipc", "--unshare-uts"]
        argv.append("--unshare-cgroup-try")
        if iso.network == "none":
            argv.append("--unshare-net")
        argv += ["--die-with-parent", "--new-session", "--hostname", fn.name[:64]]
        if uid is None:
            argv += ["--unshare-user", "--disable-userns", "--cap-drop", "ALL"]
        # /tmp first: a package that lives under /tmp is bound on top of it.
        argv += ["--size", str(iso.tmp_size_mb * MiB), "--perms", "1777", "--tmpfs", "/tmp"]
        extra = iso.ro_paths + code_ro_paths(image)
        binds = rootfs.plan_binds(str(fn.package), extra, packages=WORKER_PACKAGES)
        # bwrap would create the parents of bind targets 0700 (root-only):
        # make them traversable for the function's uid.
        parents = {str(q) for b in binds for q in Path(b.target).parents if str(q) != "/"}
        for parent in sorted(parents, key=lambda d: (d.count("/"), d)):
            argv += ["--perms", "0755", "--dir", parent]
        for bind in sorted(binds, key=lambda b: len(b.target)):
            argv += ["--ro-bind", bind.source, bind.target]
        for link in rootfs.USR_LINKS:
            if os.path.islink(link):
                argv += ["--symlink", os.readlink(link), link]
        argv += ["--proc", "/proc", "--dev", "/dev", "--remount-ro", "/"]
        argv += ["--chdir", str(fn.package)]
        self._argv_cache[key] = (argv, "")
        return argv, ""

    def _command(self, uid: int | None) -> list[str]:
        worker = [sys.executable, "-I", "-B", "-u", "-m", "huselet.worker"]
        if uid is None:
            return worker
        assert self._setpriv is not None
        drop = [self._setpriv, "--reuid", str(uid), "--regid", str(uid), "--clear-groups"]
        drop += ["--inh-caps=-all", "--bounding-set=-all", "--no-new-privs", "--"]
        return drop + worker

    async def start(self, spec: InstanceSpec) -> InstanceHandle:
        self.running()
        fn = spec.function
        deadline = trio.current_time() + fn.start_timeout_ms / 1000
        uid = self.uid_for(fn)
        base_argv, _ = self._argv(fn, uid, spec.image)
        argv = list(base_argv)
        cgroup = await self.acquire_cgroup(fn)
        link = None
        filter_fd: int | None = None
        try:
            link = await dial_link(spec.link_socket, deadline)
            pass_fds = [link.fileno()]
            if self.isolation.isolation and self.isolation.seccomp:
                filter_fd = os.memfd_create("huselet-seccomp")
                os.write(filter_fd, self._seccomp)
                os.lseek(filter_fd, 0, os.SEEK_SET)
                argv += ["--seccomp", str(filter_fd)]
                pass_fds.append(filter_fd)
            argv += ["--", *self._command(uid)]
            popen, nursery = await self.spawn_instance(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                cwd="/",
                env=worker_env(spec, link_fd=link.fileno()),
                pass_fds=pass_fds,
                close_fds=True,
                start_new_session=True,
                preexec_fn=_make_preexec(cgroup, self.isolation),
            )
        except BaseException as exc:
            await self.release_cgroup(cgroup)
            if isinstance(exc, OSError | subprocess.SubprocessError):
                log.error("bwrap spawn failed", instance=spec.instance_id, error=str(exc))
                raise StartFailed(f"could not start the sandbox: {exc}") from None
            raise
        finally:
            if link is not None:
                link.close()
            if filter_fd is not None:
                os.close(filter_fd)
        handle = SandboxHandle(spec.instance_id, popen.pid, cgroup)
        self._handles.add(handle)
        fields = {"instance": spec.instance_id, "function": fn.name}
        nursery.start_soon(self._supervise, handle, popen, cgroup, fields)
        return handle

    async def _supervise(
        self,
        handle: SandboxHandle,
        popen: subprocess.Popen[bytes],
        cgroup: Cgroup | None,
        fields: dict[str, Any],
    ) -> None:
        try:
            await self.pump_and_reap(handle, popen, fields, log)
        finally:
            self._handles.discard(handle)
            if handle.status is None:
                await handle.kill_and_reap()
            await self.release_cgroup(cgroup)

    def describe(self) -> dict[str, Any]:
        iso = self.isolation
        return {
            **super().describe(),
            "binary": self._bwrap or self.binary,
            "seccomp": iso.isolation and iso.seccomp,
            "instances": len(self._handles),
        }
