"""The runtime conformance suite: what every runtime must do, checked one way for all.

As containerd does for snapshotters, one set of tests runs against every
runtime — the built-in ``process``, ``fork``, ``bwrap`` and ``oci`` and any
third-party one registered in the ``huselet.runtimes`` entry-point group. The
tests drive the runtime the way the daemon does (runtimes, link server and
dispatcher of :mod:`huselet.testing.stack`, real workers) and check:

* start: a worker starts, connects back, serves, and sees no link token;
* exit status: a worker that exits is reported with its exit code;
* kill: :meth:`InstanceHandle.kill` is idempotent and ``wait`` returns reaped;
* stop: a graceful stop ends an idle worker without a kill;
* deadline: a request past its deadline gets its instance killed — for the
  deadline, not later by someone else — and the next request is served;
* start failure: a handler that cannot import fails the start with its error;
* memory: a handler over ``memory_mb`` fails typed (killed *and reported* as out
  of memory where the runtime claims :attr:`Claim.MEMORY_LIMIT`); the node serves on;
* cleanup: nothing of the runtime's is left on the host after the stack stops;
* isolation probes, only for what the runtime claims (:class:`Claim`).

To run it for a runtime, subclass :class:`RuntimeConformance` in a test module
(pytest collects ``Test*`` classes; the tests need ``pytest-trio``)::

    from huselet.testing.conformance import Claim, RuntimeConformance

    class TestMyRuntime(RuntimeConformance):
        runtime = "myrt"                       # its huselet.runtimes entry-point name
        claims = frozenset({Claim.MEMORY_LIMIT})

        def runtime_table(self, root):          # its [runtimes.myrt] table
            return {"socket": "/run/myrt.sock"}

        def host_problem(self):                 # why this host cannot run it, or None
            return None if shutil.which("myrt") else "myrt is not installed"

The table ``runtime_table`` returns is what the runtime reads with
:meth:`Runtime.config_table <huselet.runtime.base.Runtime.config_table>` (the
config file's own validator; a bad key is a ``RuntimeConfigError`` naming it).

A runtime that sandboxes with namespaces and the shared cgroup pool can start
from :class:`SandboxConformance`, which brings the cgroup parent, helper uids and
leftover checks that the built-in ``fork``, ``bwrap`` and ``oci`` use.

Beside this module: the handlers it runs (:mod:`huselet.testing.handlers`), its
waits and process checks (:mod:`huselet.testing.checks`), the isolation probe
(:mod:`huselet.testing.probes`) and the node stack (:mod:`huselet.testing.stack`).
"""

from __future__ import annotations

import enum
import shutil
import signal
import socket
import subprocess
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import pytest
import trio

from huselet.dispatch.counters import PoolCounter
from huselet.errors import (
    DeadlineExceeded,
    HandlerError,
    HuseletError,
    InstanceLost,
    InstanceStartFailed,
)
from huselet.runtime import InstanceHandle
from huselet.testing.checks import (
    WAIT_S,
    invoke_json,
    killed_by,
    pid_gone,
    require_tools,
    wait_for,
    zombie_children,
)
from huselet.testing.handlers import (
    BROKEN,
    ECHO,
    EXITER,
    FORK_BOMB,
    HOG,
    SLEEPER,
    SLOW_IMPORT,
)
from huselet.testing.probes import (
    ESCAPE_HANDLER,
    UID_BASE,
    cgroup_leftovers,
    describe_pids,
    host_problem,
    processes_of_uids,
    sandbox_settings,
)
from huselet.testing.stack import NodeStack, running_stack, write_package

TestFn = TypeVar("TestFn", bound=Callable[..., Any])


class Claim(enum.Enum):
    """An isolation property a runtime claims; the suite probes each claimed one."""

    # A helper uid from uid_base, no capabilities, no_new_privs, a seccomp
    # filter: ptrace, mount, unshare, setns and bpf are refused.
    PRIVILEGES = "privileges"
    # Read-only code and system, another function's code and every link socket
    # invisible, a private writable /tmp.
    FILESYSTEM = "filesystem"
    # Its own network namespace: loopback only, the host's ports unreachable.
    NETWORK = "network"
    # Its own PID namespace: it sees only its own processes, cannot signal the host's.
    PIDS = "pids"
    # memory_mb is a hard limit: a handler over it is killed, reported as out of memory.
    MEMORY_LIMIT = "memory_limit"
    # pids_max holds a fork bomb.
    PIDS_LIMIT = "pids_limit"


def needs(*claims: Claim) -> Callable[[TestFn], TestFn]:
    """Run the decorated test only for runtimes that claim any of ``claims``."""

    def mark(test: TestFn) -> TestFn:
        test.needs_claims = frozenset(claims)  # type: ignore[attr-defined]
        return test

    return mark


class RuntimeConformance:
    """The suite; subclass it with ``runtime`` set (see the module docstring)."""

    runtime: ClassVar[str]
    claims: ClassVar[frozenset[Claim]] = frozenset()
    # The pids a probe in a PID namespace sees (Claim.PIDS), e.g. [1] or [1, 2].
    visible_pids: ClassVar[list[int]] = [1]
    # The uid range instances run as (Claim.PRIVILEGES).
    uid_range: ClassVar[tuple[int, int]] = (UID_BASE, UID_BASE + 100)

    # --- hooks -------------------------------------------------------------------

    def host_problem(self) -> str | None:
        """Why this host cannot run the runtime (the tests skip with it), or None."""
        return None

    def runtime_table(self, root: Path, **extra: Any) -> dict[str, Any]:
        """The runtime's ``[runtimes.NAME]`` table for a test under ``root``."""
        return dict(extra)

    def leftovers(self, root: Path) -> list[str]:
        """What the runtime left on the host after its stack stopped (must be [])."""
        return []

    # --- plumbing ----------------------------------------------------------------

    @pytest.fixture
    def root(self, request: pytest.FixtureRequest) -> Iterator[Path]:
        """A short directory (Unix socket paths must fit in 108 bytes).

        Skips here, before the test's event loop, so the reason is reported."""
        problem = self.host_problem()
        if problem:
            pytest.skip(f"runtime {self.runtime!r} cannot run here: {problem}")
        wanted = getattr(request.function, "needs_claims", None)
        if wanted is not None and not wanted & self.claims:
            names = ", ".join(sorted(c.value for c in wanted))
            pytest.skip(f"runtime {self.runtime!r} does not claim {names}")
        path = Path(tempfile.mkdtemp(prefix="hlc"))
        yield path
        shutil.rmtree(path, ignore_errors=True)

    def function(self, root: Path, name: str, source: str, **extra: Any) -> dict[str, Any]:
        pkg = write_package(root, name, source)
        return {
            "name": name,
            "package": str(pkg),
            "handler": "main:handler",
            "runtime": self.runtime,
            **extra,
        }

    @asynccontextmanager
    async def stack(
        self, root: Path, functions: list[dict[str, Any]], **table: Any
    ) -> AsyncIterator[NodeStack]:
        tables = {self.runtime: self.runtime_table(root, **table)}
        async with running_stack(root, functions, tables) as stack:
            yield stack

    @staticmethod
    def only_handle(stack: NodeStack, name: str) -> InstanceHandle:
        (record,) = stack.pool(name).instances.values()
        handle: InstanceHandle | None = record.handle
        assert handle is not None
        return handle

    # --- the suite -----------------------------------------------------------------

    @pytest.mark.trio
    async def test_start_serve_and_identity(self, root: Path) -> None:
        async with self.stack(root, [self.function(root, "f", ECHO)]) as stack:
            with trio.fail_after(WAIT_S):
                got = await invoke_json(stack, "f", {"a": 1})
                again = await invoke_json(stack, "f", {"a": 2})
            (record,) = stack.pool("f").instances.values()
            assert got["event"] == {"a": 1} and again["event"] == {"a": 2}
            assert got["instance"] == again["instance"] == record.id  # one warm instance
            assert record.handle is not None and record.handle.instance_id == record.id
            assert not got["token_in_env"]  # the link token never reaches the handler's env

    @pytest.mark.trio
    async def test_exit_status_is_reported(self, root: Path) -> None:
        async with self.stack(root, [self.function(root, "f", EXITER)]) as stack:
            with trio.fail_after(WAIT_S), pytest.raises(InstanceLost) as lost:
                await invoke_json(stack, "f", {"code": 7})
        assert "exited with code 7 while serving" in str(lost.value)

    @pytest.mark.trio
    async def test_kill_is_idempotent_and_wait_reaps(self, root: Path) -> None:
        async with self.stack(root, [self.function(root, "f", ECHO)]) as stack:
            with trio.fail_after(WAIT_S):
                first = await invoke_json(stack, "f", {})
                handle = self.only_handle(stack, "f")
                handle.kill()
                handle.kill()  # idempotent, never raises
                status = await handle.wait()
                assert killed_by(status, signal.SIGKILL), status
                assert pid_gone(handle.pid), describe_pids([handle.pid or 0])
                assert (await handle.wait()) == status  # waiting again: the same answer
                handle.kill()  # killing the dead: still fine
                # The pool notices and serves the next request from a fresh instance.
                after = await invoke_json(stack, "f", {})
            assert after["instance"] != first["instance"]

    @pytest.mark.trio
    async def test_graceful_stop_needs_no_kill(self, root: Path) -> None:
        async with self.stack(root, [self.function(root, "f", ECHO)]) as stack:
            with trio.fail_after(WAIT_S):
                await invoke_json(stack, "f", {})
                handle = self.only_handle(stack, "f")
                # A generous grace: an idle worker must end on terminate() alone.
                status = await handle.stop(WAIT_S / 2)
        assert not killed_by(status, signal.SIGKILL), status
        assert pid_gone(handle.pid)

    @pytest.mark.trio
    async def test_deadline_kills_the_instance_for_its_deadline(self, root: Path) -> None:
        fn = self.function(root, "f", SLEEPER, timeout_ms=60_000)
        async with self.stack(root, [fn]) as stack:
            pool = stack.pool("f")
            with trio.fail_after(WAIT_S):
                assert await invoke_json(stack, "f", {}) == {"awake": True}
                handle = self.only_handle(stack, "f")
                with pytest.raises(DeadlineExceeded):
                    await invoke_json(stack, "f", {"sleep": 600}, timeout_ms=500)
                # Killed *for its deadline* — not left running for a heartbeat or
                # an idle reaper to find later, and never handed another request.
                assert pool.counters[PoolCounter.DEADLINE_KILLS] == 1
                status = await handle.wait()
                assert killed_by(status, signal.SIGKILL) or status.signal == signal.SIGTERM
                assert pid_gone(handle.pid)
                assert await invoke_json(stack, "f", {}) == {"awake": True}
            assert pool.counters[PoolCounter.HEARTBEAT_MISSED] == 0
            assert all(r.handle is not handle for r in pool.instances.values())

    @pytest.mark.trio
    async def test_start_failure_is_reported_with_its_cause(self, root: Path) -> None:
        async with self.stack(root, [self.function(root, "bad", BROKEN)]) as stack:
            with trio.fail_after(WAIT_S), pytest.raises(InstanceStartFailed) as failed:
                await invoke_json(stack, "bad", {})
        assert "boom at import" in str(failed.value)

    @pytest.mark.trio
    async def test_memory_over_the_limit_fails_typed_and_the_node_serves_on(
        self, root: Path
    ) -> None:
        functions = [
            self.function(root, "hog", HOG, memory_mb=64),
            self.function(root, "f", ECHO),
        ]
        async with self.stack(root, functions) as stack:
            with trio.fail_after(WAIT_S):
                with pytest.raises(HuseletError) as failed:
                    await invoke_json(stack, "hog", {})
                assert await invoke_json(stack, "f", {"still": "here"})
        if Claim.MEMORY_LIMIT in self.claims:
            assert isinstance(failed.value, InstanceLost), failed.value
            assert "out of memory" in str(failed.value)
            assert failed.value.status == 502
        else:  # e.g. an address-space rlimit: MemoryError in the handler, or a crash
            assert isinstance(failed.value, HandlerError | InstanceLost), failed.value

    @needs(Claim.PIDS_LIMIT)
    @pytest.mark.trio
    async def test_fork_bomb_is_held(self, root: Path) -> None:
        fn = self.function(root, "bomb", FORK_BOMB)
        async with self.stack(root, [fn], pids_max=16) as stack:
            with trio.fail_after(WAIT_S):
                got = await invoke_json(stack, "bomb", {})
                assert got["forked"] < 16 and got["error"] is not None
                # The node still serves the function (a fresh or the same instance).
                again = await invoke_json(stack, "bomb", {})
                assert again["forked"] < 16

    @pytest.mark.trio
    async def test_nothing_is_left_after_the_stack_stops(self, root: Path) -> None:
        functions = [self.function(root, "f", ECHO, max_instances=3)]
        pids: list[int | None] = []
        async with self.stack(root, functions) as stack:
            with trio.fail_after(WAIT_S):
                async with trio.open_nursery() as nursery:
                    for i in range(3):
                        nursery.start_soon(invoke_json, stack, "f", {"i": i})
            pids = [r.handle.pid for r in stack.pool("f").instances.values() if r.handle]
            assert pids
        left = [pid for pid in pids if not pid_gone(pid)]
        assert left == [], describe_pids([p for p in left if p])
        assert (remains := self.leftovers(root)) == [], remains
        await wait_for(lambda: not zombie_children(), f"zombies left: {zombie_children()}")

    @pytest.mark.trio
    async def test_a_start_out_of_time_fails_at_once_not_at_the_request_deadline(
        self, root: Path
    ) -> None:
        # 1 ms: no sandbox connects that fast, so the start gives up wherever it
        # is (in the runtime, or waiting for the worker); the request must hear
        # so then — its own deadline is far away — and nothing may be left.
        fn = self.function(root, "f", ECHO, start_timeout_ms=1, timeout_ms=600_000)
        async with self.stack(root, [fn]) as stack:
            with trio.fail_after(WAIT_S), pytest.raises(InstanceStartFailed):
                await invoke_json(stack, "f", {})
            pool = stack.pool("f")
            await wait_for(lambda: not pool.instances, "the abandoned instance is torn down")
        assert (remains := self.leftovers(root)) == [], remains
        await wait_for(lambda: not zombie_children(), f"zombies left: {zombie_children()}")

    @pytest.mark.trio
    async def test_a_start_that_times_out_leaves_nothing(self, root: Path) -> None:
        fn = self.function(root, "slow", SLOW_IMPORT, start_timeout_ms=2000)
        async with self.stack(root, [fn]) as stack:
            with trio.fail_after(WAIT_S), pytest.raises(InstanceStartFailed) as failed:
                await invoke_json(stack, "slow", {})
            assert "could not start an instance" in str(failed.value), failed.value
            pool = stack.pool("slow")
            await wait_for(lambda: not pool.instances, "the timed-out instance is torn down")
        assert (remains := self.leftovers(root)) == [], remains
        await wait_for(lambda: not zombie_children(), f"zombies left: {zombie_children()}")

    @needs(Claim.PRIVILEGES, Claim.FILESYSTEM, Claim.NETWORK, Claim.PIDS)
    @pytest.mark.trio
    async def test_isolation_probes(self, root: Path) -> None:
        got, target_alive = await self._probe_escapes(root)
        if Claim.PRIVILEGES in self.claims:
            lo, hi = self.uid_range
            assert lo <= got["uid"] < hi and got["cap_eff"] == "0000000000000000", got
            assert got["no_new_privs"] == "1" and got["seccomp"] == "2", got
            for call in ("ptrace", "mount", "unshare", "setns", "bpf"):
                assert got[call] == "EPERM", (call, got[call])
        if Claim.FILESYSTEM in self.claims:
            assert got["write_usr"] == "EROFS" and got["write_package"] == "EROFS", got
            assert got["write_tmp"] == "ok"
            assert got["read_other_code"] == "ENOENT"
            assert got["other_link"] == "ENOENT" and got["own_link"] == "ENOENT"
        if Claim.NETWORK in self.claims:
            assert got["connect_host"] == "ECONNREFUSED"  # its own loopback: nothing listens
            assert got["interfaces"] == ["lo"]
        if Claim.PIDS in self.claims:
            assert got["visible_pids"] == self.visible_pids
            assert got["kill_daemon"] in ("ESRCH", "EPERM") and target_alive
        assert not got["environ_token"]

    async def _probe_escapes(self, root: Path) -> tuple[dict[str, Any], bool]:
        """Run ESCAPE_HANDLER as "f" beside a second function "g"; what each attempt got.

        The process it tries to kill is a sacrificial ``sleep``, not the test."""
        functions = [
            self.function(root, "f", ESCAPE_HANDLER),
            self.function(root, "g", "def handler(e, c):\n    return 'secret'\n"),
        ]
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        target = subprocess.Popen(["sleep", "600"])
        try:
            async with self.stack(root, functions) as stack:
                event = {
                    "other_code": str(root / "pkgs" / "g" / "main.py"),
                    "other_link": str(stack.links.socket_path("g")),
                    "own_link": str(stack.links.socket_path("f")),
                    "port": listener.getsockname()[1],
                    "daemon_pid": target.pid,
                }
                with trio.fail_after(WAIT_S):
                    got: dict[str, Any] = await invoke_json(stack, "f", event)
            return got, target.poll() is None
        finally:
            listener.close()
            target.kill()
            target.wait()
            Path("/usr/huselet-escape").unlink(missing_ok=True)  # an escape must not litter


class SandboxConformance(RuntimeConformance):
    """For runtimes on the shared isolation settings (helper uids, cgroup pool)."""

    claims: ClassVar[frozenset[Claim]] = frozenset(Claim)

    def host_problem(self) -> str | None:
        problem = host_problem()
        return f"host cannot sandbox: {problem}" if problem else None

    def runtime_table(self, root: Path, **extra: Any) -> dict[str, Any]:
        return sandbox_settings(root, **extra)

    def leftovers(self, root: Path) -> list[str]:
        left = cgroup_leftovers(root)
        left += describe_pids(processes_of_uids(*self.uid_range))
        sandbox_dir = root / "run" / "sandbox" / self.runtime
        if sandbox_dir.exists() and any(sandbox_dir.iterdir()):
            left.append(str(sandbox_dir))
        return left


__all__ = [
    # Re-exported for test modules written against this one module.
    "ECHO",
    "WAIT_S",
    "Claim",
    "RuntimeConformance",
    "SandboxConformance",
    "invoke_json",
    "require_tools",
    "wait_for",
    "zombie_children",
]
