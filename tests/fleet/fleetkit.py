"""Helpers for fleet tests: an in-process central scheduler and a node's link, on loopback TCP."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio
from support import NodeStack, eventually, free_port, running_stack

from huselet.central.api import FleetApi
from huselet.central.backend import Backend, EtcdBackend
from huselet.central.etcd import EtcdClient
from huselet.central.server import CentralScheduler, CentralSettings
from huselet.config import SchedulerLinkSettings, TcpAddress
from huselet.config.trust import DeployPolicy
from huselet.dispatch.functions import FunctionDeployment
from huselet.fleet.commands import FleetCommands
from huselet.fleet.link import SchedulerLink

__all__ = [
    "RunningCentral",
    "central",
    "eventually",
    "free_port",
    "linked",
    "make_link",
    "placements_open",
]


def central_settings(
    state_dir: Path, port: int, name: str = "sched-a", **kw: Any
) -> CentralSettings:
    base: dict[str, Any] = {
        "heartbeat_s": 0.2,
        "lease_s": 1.0,
        "reconcile_s": 0.2,
        "fsync": False,
    }
    base.update(kw)
    return CentralSettings(name, "127.0.0.1", port, state_dir, **base)


class RunningCentral:
    def __init__(self, central: CentralScheduler, scope: trio.CancelScope) -> None:
        self.central = central
        self.api = FleetApi(central)
        self.scope = scope

    def kill(self) -> None:
        """Stop it the abrupt way an in-process test can: its connections just close."""
        self.scope.cancel()


@asynccontextmanager
async def central(
    nursery: trio.Nursery,
    state_dir: Path,
    port: int,
    name: str = "sched-a",
    *,
    etcd: str | None = None,
    ttl: int = 2,
    **kw: Any,
) -> AsyncIterator[RunningCentral]:
    """A central scheduler in this process: on ``etcd`` (an endpoint) if given, else dev mode."""
    backend: Backend | None = None
    if etcd is not None:
        backend = EtcdBackend(EtcdClient([etcd]), "/huselet-test", ttl)
    c = CentralScheduler(central_settings(state_dir, port, name, **kw), backend)
    scope = trio.CancelScope()

    async def run(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        with scope:
            await c.run(task_status=task_status)

    await nursery.start(run)
    try:
        yield RunningCentral(c, scope)
    finally:
        scope.cancel()


def link_settings(ports: list[int], node_id: str = "n1", **kw: Any) -> SchedulerLinkSettings:
    base: dict[str, Any] = {
        "backoff_base_ms": 20,
        "backoff_max_ms": 200,
        "connect_timeout_ms": 1000,
        "batch_delay_ms": 10,
    }
    base.update(kw)
    return SchedulerLinkSettings(
        addresses=tuple(TcpAddress("127.0.0.1", p) for p in ports),
        node_id=node_id,
        memory_mb=4096,
        **base,
    )


def make_link(
    stack: NodeStack, ports: list[int], *, package_root: Path | None = None, **kw: Any
) -> SchedulerLink:
    """A link whose node accepts scheduler packages below ``package_root`` (default: none)."""
    roots = (Path(os.path.realpath(package_root)),) if package_root is not None else ()

    def commands(on_placements: Callable[[str], None]) -> FleetCommands:
        return FleetCommands(
            stack.config,
            FunctionDeployment(stack.dispatcher, stack.links),
            known_runtimes=stack.runtimes,
            on_placements=on_placements,
            policy=DeployPolicy(package_roots=roots, max_memory_mb=4096),
        )

    return SchedulerLink(link_settings(ports, **kw), stack.dispatcher, commands)


def placements_open(c: RunningCentral, node_id: str = "n1") -> bool:
    """The scheduler's view says the node takes placements (it reported its lease)."""
    return bool(c.api.fleet()["nodes"].get(node_id, {}).get("placements") == "open")


@asynccontextmanager
async def linked(
    root: Path,
    functions: list[dict[str, Any]],
    *,
    package_root: Path,
    spare_ports: int = 0,
    **central_kw: Any,
) -> AsyncIterator[tuple[NodeStack, trio.Nursery, RunningCentral, SchedulerLink]]:
    """A node stack, a leading central scheduler on a free loopback port and a running link.

    The link also knows ``spare_ports`` addresses nothing listens on (for tests
    of what it does when the scheduler is gone); ``central_kw`` go to
    :func:`central`. Yields (stack, nursery, central, link); cancels all on exit.
    """
    port = free_port()
    async with (
        running_stack(root, functions) as stack,
        trio.open_nursery() as nursery,
        central(nursery, root / "central", port, **central_kw) as c,
    ):
        await c.central.leading.wait()
        ports = [port, *(free_port() for _ in range(spare_ports))]
        link = make_link(stack, ports, package_root=package_root)
        await nursery.start(link.run)
        yield stack, nursery, c, link
        nursery.cancel_scope.cancel()
