"""Dispatcher: the node-local dispatcher that owns every function's pool.

It is what the ingress calls (:meth:`Dispatcher.invoke`) and what the admin
socket inspects (:meth:`Dispatcher.status`). It enforces the deadline of
every accepted invocation — per-function ``timeout_ms``, possibly shortened by
the caller — so each one completes or gets an error, and it drains the node on
shutdown.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any, Unpack

import trio

from huselet.activity import wait_all_zero
from huselet.config import Config, FunctionSettings
from huselet.dispatch.buffer import HandOvers
from huselet.dispatch.deadlines import DeadlineTimer
from huselet.dispatch.events import ChangeEvents, ChangeListener
from huselet.dispatch.instance import CodeProvider
from huselet.dispatch.invocation import Invocation, InvokeOptions, InvokeResult
from huselet.dispatch.livepids import LivePids, PidListener
from huselet.dispatch.observer import InstanceObserver
from huselet.dispatch.pool import FunctionPool
from huselet.dispatch.reasons import StopReason
from huselet.dispatch.sources import CodeSource
from huselet.errors import (
    DeadlineExceeded,
    Draining,
    HuseletError,
    Unavailable,
    UnknownFunction,
)
from huselet.log import get_logger
from huselet.observe.ids import new_request_id
from huselet.observe.story import RequestStory
from huselet.runtime.base import Runtime
from huselet.timegrid import GridTimer

log = get_logger("dispatcher")


class Dispatcher:
    def __init__(
        self,
        config: Config,
        runtimes: Mapping[str, Runtime],
        socket_path: Any,  # Callable[[str], Path]: where a function's link socket is
        code: CodeProvider | None = None,  # None: packages are plain directories
    ) -> None:
        self.config = config
        self.code = code
        self.runtimes = runtimes
        self._socket_path = socket_path
        self.pools: dict[str, FunctionPool] = {}
        self.draining = False
        self.started_at = trio.current_time()
        # The run's clock, bound once: trio.current_time() is three calls deep, and
        # every request reads it (trio.current_time() is this clock's reading).
        self._now = trio.lowlevel.current_clock().current_time
        self._nursery: trio.Nursery | None = None
        # Observer of functions and instances (the fleet link reports them as deltas).
        # Functions and instances added/changed/removed: subscribe()/unsubscribe().
        self.changes = ChangeEvents()
        # Per function: where it came from (a CodeSource) and its fleet version.
        self.function_meta: dict[str, dict[str, Any]] = {}
        self._retiring: list[FunctionPool] = []  # replaced/removed, finishing their requests
        self.starts_held: str | None = None  # why no instance may start now (pressure)
        # Request logs and metrics (the daemon sets it); None: no story is kept.
        self.story: RequestStory | None = None
        self.instance_observer: InstanceObserver | None = None  # instance metrics
        # Every accepted invocation's deadline, on one timer (no cancel scope per request).
        self.deadlines = DeadlineTimer(self._expire)
        # Pids of every live instance (retiring pools' too), kept as they start and end.
        self.live_pids = LivePids()
        # Hand-overs to idle instances put off while a front end admits a batch (batch()).
        self.hand_overs = HandOvers()
        # Told of each request: an idle node's periodic loops stretch their tick
        # (huselet.health.idle) until the next one.
        self._grid = GridTimer.current()

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
        pool = FunctionPool(
            fn, self.runtimes[fn.runtime], path, self._nursery, self.code, self.config.health
        )
        pool.starts_held = self.starts_held
        pool.observer = self.instance_observer
        pool.live_pids = self.live_pids
        pool.buffer.hand_overs = self.hand_overs
        pool.buffer.after_batch = pool.ensure_capacity
        self.pools[fn.name] = pool
        pool.on_change = self._emit
        self._emit("function", fn.name, self.describe_function(fn.name))
        pool.ensure_capacity()  # min_instances
        return pool

    def claim_link(self, function: str, instance_id: str, token: str) -> Any:
        pool = self.pools.get(function)
        claim = None if pool is None else pool.claim_link(instance_id, token)
        for old in self._retiring:  # an instance a retired pool started before it retired
            if claim is None and old.name == function:
                claim = old.claim_link(instance_id, token)
        return claim

    # --- functions added, replaced and removed at runtime (fleet commands) ------

    def subscribe(self, listener: ChangeListener) -> None:
        """Report every function and instance change to ``listener`` from now on."""
        self.changes.subscribe(listener)

    def unsubscribe(self, listener: ChangeListener) -> None:
        self.changes.unsubscribe(listener)

    def _emit(self, kind: str, name: str, body: dict[str, Any] | None) -> None:
        self.changes.emit(kind, name, body)  # a failing listener is logged, never raised

    def describe_function(self, name: str) -> dict[str, Any]:
        """The function as reported to the central scheduler (small: sent on every change)."""
        fn = self.pools[name].settings
        meta = self.function_meta.get(name, {})
        code = getattr(fn, "digest", None) or getattr(fn, "image", None) or fn.package
        return {
            "source": str(meta.get("source", CodeSource.CONFIG)),
            "version": meta.get("version", 0),
            "runtime": fn.runtime,
            "handler": fn.handler,
            "code": str(code),
            "memory_mb": fn.memory_mb,
            "timeout_ms": fn.timeout_ms,
            "max_instances": fn.max_instances,
            "min_instances": fn.min_instances,
        }

    def deploy_function(self, fn: FunctionSettings, meta: dict[str, Any]) -> FunctionPool:
        """Add ``fn``, or replace the function of that name (its old pool finishes its work).

        New requests go to the new pool at once; the old pool serves what it
        already accepted, then stops its instances.
        """
        old = self.pools.get(fn.name)
        self.function_meta[fn.name] = dict(meta)
        pool = self.add_function_pool(fn)
        if old is not None:
            self._retire(old)
        return pool

    def remove_function(self, name: str) -> bool:
        pool = self.pools.pop(name, None)
        self.function_meta.pop(name, None)
        if pool is None:
            return False
        self._retire(pool)
        self._emit("function", name, None)
        return True

    def set_quota(self, name: str, *, max_instances: int, min_instances: int) -> None:
        pool = self.pools.get(name)
        if pool is None:
            raise UnknownFunction(f"no function named {name!r} on this node")
        # Instances above a lowered maximum are not killed: they end by idling out.
        pool.settings = replace(
            pool.settings, max_instances=max_instances, min_instances=min_instances
        )
        self._emit("function", name, self.describe_function(name))
        pool.ensure_capacity()

    def update_function(self, fn: FunctionSettings) -> None:
        """Apply new limits of ``fn`` to its running pool (the reload's in-place path)."""
        pool = self.pools.get(fn.name)
        if pool is None:
            raise UnknownFunction(f"no function named {fn.name!r} on this node")
        pool.settings = fn
        pool.buffer.capacity = fn.max_queue or self.config.gateway.queue_per_function
        self._emit("function", fn.name, self.describe_function(fn.name))
        pool.ensure_capacity()

    def _retire(self, pool: FunctionPool) -> None:
        assert self._nursery is not None
        pool.accepting = False
        self._retiring.append(pool)
        self._nursery.start_soon(self._retire_when_idle, pool, name=f"retire {pool.name}")

    async def _retire_when_idle(self, pool: FunctionPool) -> None:
        try:
            # Accepted requests keep their deadline; none outlives timeout_ms.
            with trio.move_on_after(pool.settings.timeout_ms / 1000 + 1):
                await pool.outstanding.wait_zero()
            pool.buffer.fail_all(Unavailable("the function was replaced or removed"))
            pool.stop_all(StopReason.FUNCTION_RETIRED)
            with trio.move_on_after(10):
                await pool.live_instances.wait_zero()
        finally:
            self._retiring.remove(pool)

    def takes_http(self, function: str) -> bool:
        """Whether ``function`` takes HTTP requests (events = "http", WSGI/ASGI apps)."""
        pool = self.pools.get(function)
        return pool is not None and pool.settings.kind.takes_http

    async def invoke(
        self, function: str, event: bytes, kind: str, **options: Unpack[InvokeOptions]
    ) -> InvokeResult:
        """Run one invocation to completion: a result, or a typed error raised.

        ``meta`` brings the caller's trace context and takes back the timings.
        """
        inv = self.begin(function, event, kind, **options)
        try:
            await inv.wait()
        except BaseException:
            self.abandon(inv)  # our caller was cancelled
            self.settle(inv, finished=False)
            raise
        self.settle(inv)
        return inv.result()

    def begin(
        self, function: str, event: bytes, kind: str, **options: Unpack[InvokeOptions]
    ) -> Invocation:
        """Accept one invocation without waiting for it (a refusal is raised).

        The caller then waits for it (:meth:`Invocation.wait`, or the callback
        :attr:`Invocation.on_done`), calls :meth:`abandon` if it gives up, and
        :meth:`settle` exactly once at the end; :meth:`Invocation.result` is
        the outcome. :meth:`invoke` is these in one call; the framed ingress
        uses them to serve many calls without a task each.
        """
        timeout_ms = options.get("timeout_ms")
        meta = options.get("meta")
        if self.draining:
            raise Draining("the node is draining and takes no new requests", retry_after_s=1)
        pool = self.pools.get(function)
        if pool is None:
            raise UnknownFunction(f"no function named {function!r} on this node")
        budget_ms = pool.settings.timeout_ms
        if timeout_ms is not None:
            budget_ms = min(budget_ms, timeout_ms)  # a caller may shorten, never lengthen
        now = self._now()
        deadline = now + budget_ms / 1000
        request_id = options.get("request_id") or new_request_id()
        inv = Invocation(request_id, function, event, kind, deadline, options.get("http"), now)
        inv.pool = pool
        inv.meta = meta
        story = self.story
        if meta is not None:
            inv.trace = meta.traceparent
        # A start adds a record at once (none goes away inside submit): the count
        # of records tells a cold start without two counter look-ups per request.
        instances = len(pool.instances)
        try:
            pool.submit(inv)
        except HuseletError as exc:
            if story is not None:
                story.refused(pool, inv, exc, meta)
            raise
        pool.outstanding.enter()
        self._grid.note_activity()  # an idle node's loops tick every second again
        if story is not None:
            story.admitted(pool, inv, meta)
            if len(pool.instances) != instances:
                story.cold_start(pool, inv)
        self.deadlines.watch(inv, pool)  # expires it (see _expire) unless done by then
        return inv

    def batch(self) -> HandOvers:
        """``with dispatcher.batch():`` around several :meth:`begin` calls in a row
        hands their requests to idle instances at its end, shared out, each
        instance's share in one write (:class:`~huselet.dispatch.buffer.HandOvers`)."""
        return self.hand_overs

    def abandon(self, inv: Invocation) -> None:
        """The caller gives up on ``inv`` (e.g. cancelled): it must not be delivered
        (or keep running) afterwards. Past its deadline (the timer late), it expired."""
        pool = inv.pool
        assert isinstance(pool, FunctionPool)
        if inv.done:
            return
        if trio.current_time() >= inv.deadline:
            self._expire(inv, pool)
        else:
            inv.complete(Unavailable("the request was abandoned"))
            pool.on_deadline(inv)

    def settle(self, inv: Invocation, *, finished: bool = True, now: float | None = None) -> None:
        """The end of a :meth:`begin`, once ``inv`` is done; ``finished``: its caller
        takes the outcome (False: abandoned; the request story has no end to tell).
        ``now``: the caller's clock reading, one for the calls it settles together."""
        pool = inv.pool
        assert isinstance(pool, FunctionPool)
        self.deadlines.forget()
        pool.outstanding.leave()
        if finished and self.story is not None:
            self.story.finished(pool, inv, inv.meta, now)

    def _expire(self, inv: Invocation, pool: object) -> None:
        """``inv``'s deadline passed unanswered: fail it, stop the instance stuck on it."""
        assert isinstance(pool, FunctionPool)
        budget_ms = round((inv.deadline - inv.enqueued_at) * 1000)
        inv.complete(DeadlineExceeded(f"no reply within {budget_ms} ms"))
        pool.on_deadline(inv)
        if self.story is not None:
            self.story.deadline(pool, inv)

    # --- drain and stop ---------------------------------------------------------

    async def drain(self, grace_s: float) -> None:
        """Stop taking requests, let accepted ones finish within ``grace_s``, stop instances."""
        self.draining = True
        for pool in self.pools.values():
            pool.accepting = False
        with trio.move_on_after(grace_s):
            await wait_all_zero([pool.outstanding for pool in self.pools.values()])
        for pool in self.pools.values():
            failed = pool.buffer.fail_all(Draining("the node shut down before the request ran"))
            if failed:
                log.warning("requests failed at shutdown", function=pool.name, count=failed)
        await self.stop_instances()

    async def stop_instances(self, timeout_s: float = 5.0) -> None:
        # Retired pools too: their instances' teardown needs the runtimes still running.
        pools = [*self.pools.values(), *self._retiring]
        for pool in pools:
            pool.stop_all(StopReason.NODE_STOPPING)
        with trio.move_on_after(timeout_s):
            await wait_all_zero([pool.live_instances for pool in pools])

    # --- resource pressure (the health loops call these) ---------------------------

    def hold_starts(self, reason: str | None) -> None:
        """While ``reason`` is set no instance starts; warm instances keep serving.

        A request for a function with no instance at all is refused at once
        (503 naming the reason) instead of waiting for a start that cannot come.
        """
        if reason == self.starts_held:
            return
        self.starts_held = reason
        if reason:
            log.warning("instance starts held", reason=reason)
        else:
            log.info("instance starts allowed again")
        for pool in self.pools.values():
            pool.starts_held = reason
            if reason is None:
                pool.ensure_capacity()  # requests that queued meanwhile

    def reap_idle(self, reason: str) -> int:
        """Gracefully stop idle instances (each function keeps ``min_instances``)."""
        reaped = sum(pool.reap_idle() for pool in self.pools.values())
        if reaped:
            log.warning("idle instances reaped", count=reaped, reason=reason)
        return reaped

    def instance_pids(self) -> list[int]:
        return list(self.live_pids)

    def watch_pids(self, listener: PidListener) -> None:
        """Tell ``listener`` of every live instance's pid, and of each start and end."""
        self.live_pids.subscribe(listener)

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
        # A replaced pool's instances still finish their requests (old code): show them.
        for pool in self._retiring:
            for record in pool.instances.values():
                out.append({"function": pool.name, "retiring": True, **record.describe()})
        return out
