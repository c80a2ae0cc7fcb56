"""Prometheus metrics of the node: definitions per subsystem, one registry, exposition.

- :mod:`huselet.metrics.requests`: invocations by function (outcomes, durations);
- :mod:`huselet.metrics.instances`: cold-start phases, start failures, deaths;
- :mod:`huselet.metrics.collector`: state read at scrape time (pools, breakers,
  health loops, cache, fleet link) — free for the request path;
- :mod:`huselet.metrics.histogram`: the lock-free histogram the hot path uses;
- :mod:`huselet.metrics.server`: the ``[metrics] http`` listener.

:class:`NodeMetrics` wires them into one ``CollectorRegistry`` (plus
prometheus_client's process collector: CPU, RSS, open fds) and renders the
exposition for ``GET /metrics`` and ``huselet ctl metrics``.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.exposition import choose_encoder

from huselet.metrics.collector import NodeCollector
from huselet.metrics.histogram import LAG_BUCKETS, Histogram
from huselet.metrics.instances import InstanceMetrics
from huselet.metrics.requests import RequestMetrics

__all__ = ["Histogram", "InstanceMetrics", "NodeCollector", "NodeMetrics", "RequestMetrics"]


class NodeMetrics:
    """The node's metrics: observed ones (None when ``[metrics] enabled = false``) and
    the registry that also reads the daemon's state at scrape time."""

    def __init__(self, *, enabled: bool) -> None:
        self.enabled = enabled
        self.requests = RequestMetrics() if enabled else None
        self.instances = InstanceMetrics() if enabled else None
        self.lag = Histogram(LAG_BUCKETS) if enabled else None
        self.registry = CollectorRegistry(auto_describe=False)
        ProcessCollector(registry=self.registry)

    def attach(self, collector: NodeCollector) -> None:
        self.registry.register(collector)

    def render(self, accept: str | None = None) -> tuple[bytes, str]:
        """The exposition in the format ``accept`` prefers (text 0.0.4 or OpenMetrics)."""
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type
