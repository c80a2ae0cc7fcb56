"""The node's observability, wired: metrics, the request story, the log ring.

:class:`NodeObservability` builds the metrics registry and the request story
(access log, per-function log ring, request metrics) and hands them to the
dispatcher; once every other component exists, :meth:`NodeObservability.attach`
lets the scrape-time collector read them. It also answers the admin commands
that read these (``metrics``, ``logs``, ``top``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import huselet
from huselet.admin.errors import AdminCommandError
from huselet.config import Config
from huselet.dispatch.dispatcher import Dispatcher
from huselet.health.lag import LagProbe
from huselet.health.supervisor import LoopReport
from huselet.metrics import NodeCollector, NodeMetrics
from huselet.metrics.server import MetricsServer
from huselet.observe.ring import LogRing
from huselet.observe.story import RequestStory
from huselet.observe.top import function_sample, node_sample


class NodeObservability:
    """Metrics, request story and log ring of one daemon, and the admin replies on them."""

    def __init__(self, config: Config, dispatcher: Dispatcher) -> None:
        self.dispatcher = dispatcher
        self.metrics = NodeMetrics(enabled=config.metrics.enabled)
        self.log_ring = LogRing(config.log.ring_records, lambda name: name in dispatcher.pools)
        dispatcher.story = RequestStory(
            metrics=self.metrics.requests, ring=self.log_ring, access_rate=config.log.access_rate
        )
        dispatcher.instance_observer = self.metrics.instances
        self.server: MetricsServer | None = None
        if config.metrics.enabled and config.metrics.http is not None:
            self.server = MetricsServer(config.metrics.http, self.metrics.render)
        self.lag_probe: LagProbe | None = None

    def attach(
        self,
        *,
        node_id: str,
        lag_probe: LagProbe,
        health: Callable[[], Mapping[str, LoopReport]],
        cache_stats: Callable[[], Mapping[str, Any]],
        fleet: Callable[[], Mapping[str, Any] | None] | None,
        runtimes: Mapping[str, Any],
        admission: Callable[[], Mapping[str, Any]],
    ) -> None:
        """After every component exists: the collector reads them at scrape time."""
        self.lag_probe = lag_probe
        lag_probe.histogram = self.metrics.lag
        self.metrics.attach(
            NodeCollector(
                node_id=node_id,
                version=huselet.__version__,
                dispatcher=self.dispatcher,
                requests=self.metrics.requests,
                instances=self.metrics.instances,
                health=health,
                lag=self.metrics.lag,
                cache_stats=cache_stats,
                fleet=fleet,
                zygote_memory=lambda: zygote_memory(runtimes),
                admission=admission,
            )
        )

    # --- admin commands ---------------------------------------------------------------

    def metrics_command(self, args: dict[str, Any]) -> dict[str, Any]:
        body, content_type = self.metrics.render(args.get("accept"))
        return {"content_type": content_type, "text": body.decode("utf-8")}

    def logs_command(self, args: dict[str, Any]) -> dict[str, Any]:
        function = args.get("function")
        request_id = args.get("request_id")
        after = args.get("after_seq", 0)
        since = args.get("since_s")
        limit = args.get("limit", 1000)
        if not isinstance(function, str):
            raise AdminCommandError("bad_request", "give the function name")
        if request_id is not None and not isinstance(request_id, str):
            raise AdminCommandError("bad_request", "request_id must be a string")
        if type(after) is not int or type(limit) is not int:
            raise AdminCommandError("bad_request", "after_seq and limit must be integers")
        if since is not None and (not isinstance(since, int | float) or since < 0):
            raise AdminCommandError("bad_request", "since_s must be a non-negative number")
        found = self.log_ring.query(
            function, request_id=request_id, after_seq=after, since_s=since, limit=limit
        )
        if found is None:
            raise AdminCommandError("not_found", f"no function named {function!r} on this node")
        return found

    def top_command(self, args: dict[str, Any]) -> dict[str, Any]:
        requests = self.metrics.requests
        node = node_sample()
        if self.lag_probe is not None:
            node["lag_ms"] = round(self.lag_probe.last_lag_ms, 3)
            node["max_lag_ms"] = round(self.lag_probe.max_lag_ms, 3)
        return {
            "node": node,
            "functions": [
                function_sample(
                    pool, requests.functions.get(name) if requests is not None else None
                )
                for name, pool in sorted(self.dispatcher.pools.items())
            ],
        }


def zygote_memory(runtimes: Mapping[str, Any]) -> int | None:
    """Memory of the fork runtime's zygotes, summed; None for a node without them."""
    # The fork runtime keeps its zygotes in slots; other runtimes have none.
    slots = getattr(runtimes.get("fork"), "_slots", None)
    if not isinstance(slots, dict):
        return None
    total = 0
    for slot in list(slots.values()):
        process = getattr(slot, "process", None)
        if process is not None and not getattr(slot, "closed", False):
            total += process.memory_bytes()
    return total
