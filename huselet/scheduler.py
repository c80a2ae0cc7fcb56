"""NodeScheduler: the node-local scheduler that owns every function's pool.

It is what the ingress calls (:meth:`NodeScheduler.invoke`) and what the admin
socket inspects (:meth:`NodeScheduler.status`). It enforces the deadline of
every accepted invocation — per-function ``timeout_ms``, possibly shortened by
the caller — so each one completes or gets an error, and it drains the node on
shutdown.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import trio

from huselet.config import Config
from huselet.errors import (
    DeadlineExceeded,
    Draining,
    HuseletError,
    Unavailable,
    UnknownFunction,
)
from huselet.invocation import Invocation, InvokeResult
from huselet.log import get_logger
from huselet.pool import FunctionPool
from huselet.runtime.base import Runtime

log = get_logger("scheduler")


def new_request_id() -> str:
    return secrets.token_hex(8)


class NodeScheduler:
    def __init__(
        self,
        config: Config,
        runtimes: Mapping[str, Runtime],
        socket_path: Any,  # Callable[[str], Path]: where a function's link socket is
    ) -> None:
        self.config = config
        self.runtimes = runtimes
        self._socket_path = socket_path
        self.pools: dict[str, FunctionPool] = {}
        self.draining = False
        self.started_at = trio.current_time()
        self._nursery: trio.Nursery | None = None

    @property
    def running(self) -> bool:
        return self._nursery is not None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                for fn in self.config.functions:
                    self.add_function_pool(fn)
                task_status.started()
                await trio.sleep_forever()
        finally:
            self._nursery = None

    def add_function_pool(self, fn: Any) -> FunctionPool:
        assert self._nursery is not None
        path: Path = self._socket_path(fn.name)
        pool = FunctionPool(fn, self.runtimes[fn.runtime], path, self._nursery)
        self.pools[fn.name] = pool
        pool.ensure_capacity()  # min_instances
        return pool

    def claim_link(self, function: str, instance_id: str, token: str) -> Any:
        pool = self.pools.get(function)
        return None if pool is None else pool.claim_link(instance_id, token)

    async def invoke(
        self,
        function: str,
        event: bytes,
        kind: str,
        *,
        timeout_ms: int | None = None,
        request_id: str | None = None,
    ) -> InvokeResult:
        """Run one invocation to completion: a result, or a typed error raised."""
        if self.draining:
            raise Draining("the node is draining and takes no new requests", retry_after_s=1)
        pool = self.pools.get(function)
        if pool is None:
            raise UnknownFunction(f"no function named {function!r} on this node")
        budget_ms = pool.settings.timeout_ms
        if timeout_ms is not None:
            budget_ms = min(budget_ms, timeout_ms)  # a caller may shorten, never lengthen
        deadline = trio.current_time() + budget_ms / 1000
        inv = Invocation(request_id or new_request_id(), function, event, kind, deadline)
        pool.submit(inv)
        try:
            with trio.move_on_at(deadline):
                await inv.wait()
        finally:
            if not inv.done:
                # Deadline passed, or our caller was cancelled: either way the
                # invocation must not be delivered (or keep running) afterwards.
                timed_out = trio.current_time() >= deadline
                error: HuseletError = (
                    DeadlineExceeded(f"no reply within {budget_ms} ms")
                    if timed_out
                    else Unavailable("the request was abandoned")
                )
                inv.complete(error)
                pool.on_deadline(inv)
        return inv.result()

    # --- drain and stop ---------------------------------------------------------

    async def drain(self, grace_s: float) -> None:
        """Stop taking requests, let accepted ones finish within ``grace_s``, stop instances."""
        self.draining = True
        for pool in self.pools.values():
            pool.accepting = False
        with trio.move_on_after(grace_s):
            while any(pool.busy() for pool in self.pools.values()):
                await trio.sleep(0.01)
        for pool in self.pools.values():
            failed = pool.buffer.fail_all(Draining("the node shut down before the request ran"))
            if failed:
                log.warning("requests failed at shutdown", function=pool.name, count=failed)
        await self.stop_instances()

    async def stop_instances(self, timeout_s: float = 5.0) -> None:
        for pool in self.pools.values():
            pool.stop_all("node stopping")
        with trio.move_on_after(timeout_s):
            while any(pool.instances for pool in self.pools.values()):
                await trio.sleep(0.01)

    # --- inspection ---------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        functions = [pool.status() for pool in self.pools.values()]
        totals: dict[str, int] = {}
        instances: dict[str, int] = {}
        for f in functions:
            for key, value in f["counters"].items():
                totals[key] = totals.get(key, 0) + value
            for state, count in f["instances"].items():
                instances[state] = instances.get(state, 0) + count
        return {
            "draining": self.draining,
            "functions": functions,
            "instances": instances,
            "queued": sum(f["queued"] for f in functions),
            "counters": totals,
        }

    def instances(self) -> list[dict[str, Any]]:
        out = []
        for pool in self.pools.values():
            for record in pool.instances.values():
                out.append({"function": pool.name, **record.describe()})
        return out
