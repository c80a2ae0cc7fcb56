"""The in-process node stack: runtimes, link server and dispatcher wired as the
daemon wires them, with real worker processes, plus function packages written
by tests. Used by huselet's own tests and by the runtime conformance suite."""

from __future__ import annotations

import textwrap
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import trio

from huselet.config import FunctionSettings, parse_config
from huselet.dispatch.dispatcher import Dispatcher
from huselet.dispatch.links import LinkServer
from huselet.runtime import available_runtimes, create_runtimes


def write_package(root: Path, name: str, source: str, module: str = "main") -> Path:
    pkg = root / "pkgs" / name
    pkg.mkdir(parents=True, exist_ok=True)
    (pkg / f"{module}.py").write_text(textwrap.dedent(source))
    return pkg


class NodeStack:
    """Runtimes, link server and dispatcher, as the daemon wires them."""

    def __init__(
        self,
        root: Path,
        functions: list[dict[str, Any]],
        runtimes: dict[str, dict[str, Any]] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        raw: dict[str, Any] = {
            "node": {"state_dir": str(root / "state"), "run_dir": str(root / "run")},
            "functions": functions,
            **(extra or {}),  # more top-level tables, e.g. {"health": {...}}
        }
        if runtimes:
            raw["runtimes"] = runtimes
        self.config = parse_config(
            raw, base_dir=root, known_runtimes=frozenset(available_runtimes())
        )
        self.config.node.run_dir.mkdir(parents=True, exist_ok=True)
        # As the daemon does: every runtime a function names (and "process").
        names = {fn.runtime for fn in self.config.functions} | {"process"}
        self.runtimes = create_runtimes(names, self.config.runtimes, node=self.config.node)
        for name, runtime in self.runtimes.items():
            runtime.expect([fn for fn in self.config.functions if fn.runtime == name])
        self.links = LinkServer(self.config.node.run_dir, self._claim, max_frame=8 * 1024 * 1024)
        self.dispatcher = Dispatcher(self.config, self.runtimes, self.links.socket_path)

    def _claim(self, function: str, instance_id: str, token: str) -> Any:
        return self.dispatcher.claim_link(function, instance_id, token)

    def pool(self, name: str) -> Any:
        return self.dispatcher.pools[name]

    def function(self, name: str) -> FunctionSettings:
        fn = self.config.function(name)
        assert fn is not None
        return fn

    def replace_function(self, name: str, **changes: Any) -> None:
        self.pool(name).settings = replace(self.function(name), **changes)


@asynccontextmanager
async def running_stack(
    root: Path,
    functions: list[dict[str, Any]],
    runtimes: dict[str, dict[str, Any]] | None = None,
    extra: dict[str, Any] | None = None,
) -> AsyncIterator[NodeStack]:
    stack = NodeStack(root, functions, runtimes, extra)
    async with trio.open_nursery() as nursery:
        for runtime in stack.runtimes.values():
            await nursery.start(runtime.run)
        await nursery.start(stack.links.run, [f["name"] for f in functions])
        await nursery.start(stack.dispatcher.run)
        try:
            yield stack
        finally:
            with trio.move_on_after(10):
                await stack.dispatcher.stop_instances()
            nursery.cancel_scope.cancel()
