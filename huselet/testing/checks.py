"""What the runtime conformance suite checks with: waits, process states, invocations.

Shared by :mod:`huselet.testing.conformance` and tests of single runtimes.
Every wait is bounded, generously (:data:`WAIT_S`): the bound only ends a test
that already failed, so a loaded machine never turns a slow pass into a failure.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import trio

from huselet.runtime import ExitStatus
from huselet.runtime.children import own_children
from huselet.testing.stack import NodeStack

WAIT_S = 60.0


def zombie_children() -> list[str]:
    """Exited children of this process nobody reaped: a runtime leaked them."""
    out = []
    for pid in own_children():
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        if stat.rsplit(")", 1)[1].split()[0] == "Z":
            out.append(f"{pid} {stat.split(')', 1)[0]})")
    return out


def killed_by(status: ExitStatus, signum: int) -> bool:
    """Killed by ``signum``: as a signal, or as the shell's ``128 + n`` exit code
    (what a sandbox's init or a container manager reports for its child)."""
    return status.signal == signum or status.code == 128 + signum


def pid_gone(pid: int | None) -> bool:
    """No such process — not even a zombie: the runtime reaped it."""
    return pid is None or not Path(f"/proc/{pid}").exists()


async def invoke_json(stack: NodeStack, name: str, event: object, **kw: Any) -> Any:
    result = await stack.dispatcher.invoke(name, json.dumps(event).encode(), "json", **kw)
    return json.loads(result.body)


async def wait_for(predicate: Any, what: str, timeout: float = WAIT_S) -> None:
    with trio.move_on_after(timeout):
        while not predicate():
            await trio.sleep(0.01)
        return
    raise AssertionError(f"{what}: not within {timeout} s")


def require_tools(*tools: str) -> str | None:
    """None if every tool is on PATH, else which are missing (for host_problem)."""
    missing = [t for t in tools if shutil.which(t) is None]
    return f"{', '.join(missing)} not installed" if missing else None
