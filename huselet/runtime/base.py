"""The runtime plugin interface: how the node's dispatcher starts and stops sandboxes.

A runtime turns an :class:`InstanceSpec` into a running sandbox whose worker
connects back to ``spec.link_socket`` and introduces itself with
``spec.instance_id`` and ``spec.token``. The scheduler never talks to the
sandbox except through that link and the :class:`InstanceHandle`.

Third-party runtimes are classes registered in the ``huselet.runtimes``
entry-point group; they receive their own ``[runtimes.NAME]`` TOML table.
"""

from __future__ import annotations

import signal
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

import trio

from huselet.config import FunctionSettings, NodeSettings
from huselet.config.table import ConfigTable
from huselet.errors import ConfigError


class RuntimeError_(Exception):
    """Base of runtime errors (named with a trailing _ to keep the builtin visible)."""


class RuntimeConfigError(RuntimeError_):
    """A runtime's own TOML table is invalid, or the host lacks what it needs."""


class StartFailed(RuntimeError_):
    """The sandbox could not be created; the message is safe to show to callers."""


class CodeHold(Protocol):
    """A function's code, held (an image stays pinned) until released."""

    @property
    def image(self) -> Path | None: ...  # None: ``function.package`` is a directory

    def release(self) -> None: ...


class CodeSource(Protocol):
    """Where instances get their code (the node's package cache): what
    :attr:`InstanceSpec.image` will be for a function's requests."""

    async def acquire(self, fn: FunctionSettings) -> CodeHold: ...


@dataclass(frozen=True)
class InstanceSpec:
    instance_id: str
    function: FunctionSettings
    link_socket: Path
    token: str
    # Extra environment for the worker, on top of the function's own ``env``.
    env: Mapping[str, str] = field(default_factory=dict)
    # The verified code image to import from; None: ``function.package`` is a directory.
    image: Path | None = None


@dataclass(frozen=True)
class ExitStatus:
    """How a sandbox ended. Exactly one of ``code`` / ``signal`` is set."""

    code: int | None = None
    signal: int | None = None
    oom_killed: bool = False
    max_rss_kb: int | None = None
    cpu_s: float | None = None

    def describe(self) -> str:
        if self.oom_killed:
            return "was killed: out of memory"
        if self.signal is not None:
            try:
                name = signal.Signals(self.signal).name
            except ValueError:
                name = f"signal {self.signal}"
            return f"was killed by {name}"
        return f"exited with code {self.code}"

    @classmethod
    def from_returncode(cls, returncode: int, **kw: Any) -> ExitStatus:
        if returncode < 0:
            return cls(signal=-returncode, **kw)
        return cls(code=returncode, **kw)


class InstanceHandle(ABC):
    """A started sandbox, as the scheduler sees it."""

    instance_id: str
    pid: int | None

    @abstractmethod
    async def wait(self) -> ExitStatus:
        """Return once the sandbox is gone and reaped (no zombie left)."""

    @abstractmethod
    def kill(self) -> None:
        """Kill the sandbox now (SIGKILL or equivalent). Idempotent, never blocks."""

    def terminate(self) -> None:
        """Ask the sandbox to stop (SIGTERM or equivalent). Default: kill."""
        self.kill()

    def on_exit(self, callback: Callable[[ExitStatus], None]) -> bool:
        """Call ``callback(status)`` once the sandbox is gone (at once if it is).

        False: this handle cannot call back, and whoever asked awaits :meth:`wait`
        in a task instead (a callback saves a task per instance).
        """
        return False

    async def stop(self, grace_s: float) -> ExitStatus:
        """Terminate, wait up to ``grace_s``, then kill; always returns reaped."""
        self.terminate()
        with trio.move_on_after(grace_s):
            return await self.wait()
        self.kill()
        return await self.wait()


class Runtime(ABC):
    """A way of starting sandboxes. One object per daemon, shared by all functions."""

    name: ClassVar[str]

    def __init__(self, settings: Mapping[str, Any], *, node: NodeSettings) -> None:
        self.settings = settings
        self.node = node

    @contextmanager
    def config_table(self) -> Iterator[ConfigTable]:
        """This runtime's ``[runtimes.NAME]`` table, read with the config file's own validator.

        Read the keys with its typed getters inside the ``with``; on leaving, a key
        nobody read is refused as unknown. Every refusal — a wrong type, a value out
        of range, an unknown key, a ``ConfigError`` of the runtime's own — leaves as a
        :class:`RuntimeConfigError` naming ``runtimes.NAME.key``: the one error type
        ``run --check``, ``run`` and a reload already turn into a refusal.
        """
        table = ConfigTable(self.settings, f"runtimes.{self.name}", Path(self.node.state_dir))
        try:
            yield table
            table.finish()
        except ConfigError as exc:
            raise RuntimeConfigError(str(exc)) from None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Background work the runtime needs (pools, zygotes, log pumps).

        Started once from the daemon's nursery before any ``start`` call.
        """
        task_status.started()
        await trio.sleep_forever()

    # Where instances' code comes from; None: each ``function.package`` directory.
    code: CodeSource | None = None

    def use_code(self, code: CodeSource) -> None:
        """Where the requests' code comes from (the daemon's package cache); called
        before :meth:`run`, so what a runtime prepares ahead is what requests use."""
        self.code = code

    def expect(self, functions: Sequence[FunctionSettings]) -> None:
        """The functions configured to use this runtime; called before :meth:`run`.

        Lets a runtime prepare ahead of need (e.g. ``fork`` builds zygotes at
        start rather than on the first request, from :attr:`code`). Default: nothing.
        """
        return None

    @abstractmethod
    async def start(self, spec: InstanceSpec) -> InstanceHandle:
        """Create the sandbox and return at once; the worker connects back later.

        Raises :class:`StartFailed` with a caller-safe message.
        """

    def describe(self) -> dict[str, Any]:
        """What ``huselet ctl`` shows about this runtime."""
        return {"name": self.name}
