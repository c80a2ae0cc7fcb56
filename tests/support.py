"""Helpers shared by the suite (fixtures are in conftest.py).

* the in-process node stack and function packages (re-exported from
  :mod:`huselet.testing.stack`, which the runtime conformance suite shares);
* waiting for a condition with a generous deadline, never for a fixed time:
  :func:`wait_until` from synchronous tests, :func:`eventually` from trio ones;
* ports and processes: :func:`free_port`, :func:`closed_port`, :func:`pid_alive`;
* gates: a handler that waits at a gate (:data:`GATE_WAIT`) until the test opens
  it (:func:`open_gate`), instead of sleeping for a time a loaded machine may outlast.
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio

from huselet.testing.probes import require_sandbox_host, sandbox_settings
from huselet.testing.stack import NodeStack, running_stack, write_package

__all__ = [
    "GATE_WAIT",
    "PID_HANDLER",
    "NodeStack",
    "closed_port",
    "eventually",
    "fork_stack",
    "free_port",
    "open_gate",
    "pid_alive",
    "running_stack",
    "unconfined_stack",
    "wait_until",
    "write_package",
]

# A handler answering with its worker's pid: which instance served a request.
PID_HANDLER = "import os\n\ndef handler(event, context):\n    return {'pid': os.getpid()}\n"


# Source for a handler module: ``wait_at_gate(path)`` returns once ``path`` exists
# (the test opened the gate) or after ``hold`` s, so a failing test never leaves
# an instance stuck. Where the gate goes: unconfined, any host path; a sandboxed
# ``process`` instance sees only its own private /tmp: put the gate there and
# open it with :func:`open_gate`; a ``fork`` instance's /tmp belongs to its user
# namespace, where root cannot create a file (EOVERFLOW): keep a host directory
# in its view (the runtime's ``ro_paths``) and create the gate there.
GATE_WAIT = """
import os as _gate_os, time as _gate_time

def wait_at_gate(path, hold=120.0):
    deadline = _gate_time.monotonic() + hold
    while not _gate_os.path.exists(path) and _gate_time.monotonic() < deadline:
        _gate_time.sleep(0.01)
"""


def open_gate(pids: Iterable[int], gate: str) -> int:
    """Create ``gate`` (an absolute path as the instances see it, such as
    ``/tmp/gate-x``) inside each process of ``pids``: through /proc/PID/root, so
    it lands in a sandbox's private /tmp (unconfined, that is the host's own).
    Returns how many it opened; a process that is gone holds nothing."""
    opened = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            Path(f"/proc/{pid}/root{gate}").touch()
            opened += 1
    return opened


def unconfined_stack(
    root: Path, name: str, source: str, **spec: Any
) -> contextlib.AbstractAsyncContextManager[NodeStack]:
    """A node stack serving one function ``name`` (handler ``source``, extra ``spec``
    keys) on the ``process`` runtime unconfined: the pool is under test, not the sandbox."""
    write_package(root, name, source)
    fn = {"name": name, "package": f"pkgs/{name}", "handler": "main:handler", **spec}
    return running_stack(root, [fn], runtimes={"process": {"isolation": False}})


# Deadlines are generous on purpose: they only bound a test that is already
# failing, so a loaded machine (CI, stress) never turns a slow pass into a fail.
WAIT_S = 30.0


def wait_until(
    predicate: Callable[[], Any], timeout: float = WAIT_S, interval: float = 0.02
) -> bool:
    """Poll ``predicate`` until it is truthy or ``timeout`` passes; its last value's truth."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


async def eventually(
    predicate: Callable[[], Any], timeout: float = WAIT_S, interval: float = 0.01
) -> None:
    """Wait until ``predicate()`` holds; fail (not hang) after ``timeout``."""
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(interval)


def tampered(secret: str) -> str:
    """``secret`` with its last character changed: always a wrong value.

    (``secret[:-1] + "x"`` is the same secret when it already ends in "x": one
    random token in 64.)
    """
    return secret[:-1] + ("y" if secret.endswith("x") else "x")


def free_port() -> int:
    """A localhost TCP port free right now (for a server the test starts next)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# Nobody listens on a port just released: connecting to it is refused.
closed_port = free_port


def pid_alive(pid: int) -> bool:
    """The process exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):  # gone, or reaped mid-read (ESRCH)
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@asynccontextmanager
async def fork_stack(
    root: Path, name: str, source: str, **settings: object
) -> AsyncIterator[NodeStack]:
    """Function ``name`` (``main.py`` = ``source``) on a fully isolated ``fork`` runtime
    with the runtime ``settings`` added; skips the test on a host that cannot sandbox."""
    require_sandbox_host()
    pkg = write_package(root, name, source)
    spec = {"name": name, "package": str(pkg), "handler": "main:handler", "runtime": "fork"}
    async with running_stack(root, [spec], {"fork": sandbox_settings(root, **settings)}) as stack:
        yield stack
