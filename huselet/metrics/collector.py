"""NodeCollector: the daemon's state, read at scrape time.

Everything here reads counters and state the daemon keeps anyway (pool
counters, instance states, breakers, health reports, cache statistics, the
fleet link), so these metrics cost the request path nothing. Label values
come from configured function names, code-defined health loop names and
fixed words; a function that is removed drops its series at the next scrape
(the observed metrics are pruned to the functions the dispatcher serves).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Protocol

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from huselet.dispatch.counters import PoolCounter
from huselet.dispatch.instance import InstanceState
from huselet.health.breaker import BreakerState
from huselet.health.counters import HealthCounter
from huselet.health.supervisor import HealthState, LoopReport
from huselet.log import dropped_lines
from huselet.metrics.families import counter, gauge, one_hot
from huselet.metrics.histogram import Histogram
from huselet.metrics.instances import InstanceMetrics
from huselet.metrics.requests import RequestMetrics

FLEET_STATES = ("starting", "connecting", "handshake", "established", "backoff")


class PoolView(Protocol):
    name: str
    counters: Mapping[str, int]

    def status(self) -> dict[str, Any]: ...

    def instance_pids(self) -> list[int]: ...


class DispatcherView(Protocol):
    @property
    def pools(self) -> Mapping[str, Any]: ...


def pss_bytes(pid: int) -> int:
    """Proportional set size of ``pid`` (0 if gone or unreadable)."""
    try:
        with open(f"/proc/{pid}/smaps_rollup", "rb") as f:
            for line in f:
                if line.startswith(b"Pss:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def _admission(snapshot: Mapping[str, Any]) -> Iterator[Metric]:
    """The gateway's admission counters; tenant labels come from the keys file ("-": none)."""
    yield CounterMetricFamily(
        "huselet_admission_admitted",
        "Invocations admitted by the gateway (authenticated and within limits).",
        value=snapshot.get("admitted", 0),
    )
    refusals = counter("huselet_admission_refusals", "reason", "tenant")
    for reason, by_tenant in sorted(snapshot.get("refusals", {}).items()):
        for tenant, n in sorted(by_tenant.items()):
            refusals.add_metric([reason, tenant], n)
    requests = counter("huselet_tenant_requests", "tenant")
    throttled = counter("huselet_tenant_throttled", "tenant")
    in_flight = gauge("huselet_tenant_in_flight", "tenant")
    replay = gauge("huselet_tenant_replay_cache_bytes", "tenant")
    for tenant, row in sorted(snapshot.get("tenants", {}).items()):
        requests.add_metric([tenant], row.get("admitted", 0))
        throttled.add_metric([tenant], row.get("throttled", 0))
        in_flight.add_metric([tenant], row.get("in_flight", 0))
        replay.add_metric([tenant], row.get("replay_cache_bytes", 0))
    yield from (refusals, requests, throttled, in_flight, replay)
    # Signed mode's verification CPU, sampled (huselet.tenants.verify_cost).
    seconds = counter("huselet_auth_verify_seconds", "step")
    samples = counter("huselet_auth_verify_samples", "step")
    for step, row in sorted(snapshot.get("verify_cost", {}).items()):
        if isinstance(row, dict):
            seconds.add_metric([step], row["cpu_ns"] / 1e9)
            samples.add_metric([step], row["samples"])
    yield from (seconds, samples)


class NodeCollector:
    """A prometheus_client collector over the live daemon (register it once)."""

    def __init__(
        self,
        *,
        node_id: str,
        version: str,
        dispatcher: DispatcherView,
        requests: RequestMetrics | None,
        instances: InstanceMetrics | None,
        health: Callable[[], Mapping[str, LoopReport]] | None = None,
        lag: Histogram | None = None,
        cache_stats: Callable[[], Mapping[str, Any]] | None = None,
        fleet: Callable[[], Mapping[str, Any] | None] | None = None,
        zygote_memory: Callable[[], int | None] | None = None,
        admission: Callable[[], Mapping[str, Any]] | None = None,
    ) -> None:
        self.node_id = node_id
        self.version = version
        self.dispatcher = dispatcher
        self.requests = requests
        self.instances = instances
        self.health = health
        self.lag = lag
        self.cache_stats = cache_stats
        self.fleet = fleet
        self.zygote_memory = zygote_memory
        self.admission = admission  # Admission.snapshot: tenants, refusals (plain dicts)

    def describe(self) -> list[Metric]:
        return []  # families vary with the functions: collected on demand only

    def collect(self) -> Iterator[Metric]:
        info = GaugeMetricFamily(
            "huselet_build_info", "Always 1; labels name the build.", labels=["version", "node"]
        )
        info.add_metric([self.version, self.node_id], 1)
        yield info
        pools = dict(self.dispatcher.pools)
        if self.requests is not None:
            self.requests.prune(pools)
            yield from self.requests.collect()
        if self.instances is not None:
            self.instances.prune(pools)
            yield from self.instances.collect()
        yield from self._pools(pools)
        if self.health is not None:
            yield from self._health(self.health())
        if self.lag is not None:
            yield _histogram(
                "huselet_event_loop_lag_seconds",
                "The event loop's longest stall in each health.lag_period_ms.",
                self.lag,
            )
        if self.cache_stats is not None:
            yield from self._cache(self.cache_stats())
        if self.fleet is not None:
            described = self.fleet()
            if described is not None:
                yield from self._fleet(described)
        if self.admission is not None:
            yield from _admission(self.admission())
        yield from _instance_output()
        yield CounterMetricFamily(
            "huselet_log_lines_dropped",
            "The daemon's own log lines dropped because stderr did not take them "
            "(log.buffer_kb was full).",
            value=dropped_lines(),
        )

    def _pools(self, pools: Mapping[str, Any]) -> Iterator[Metric]:
        instances = gauge("huselet_instances", "function", "state")
        inflight = gauge("huselet_requests_in_flight", "function")
        queued = gauge("huselet_queue_depth", "function")
        starts = counter("huselet_cold_starts", "function", "runtime")
        events = counter("huselet_pool_events", "function", "event")
        breaker = gauge("huselet_breaker_state", "function", "state")
        opened = counter("huselet_breaker_opened", "function")
        pss = gauge("huselet_instance_pss_bytes", "function")
        for name in sorted(pools):
            pool = pools[name]
            status = pool.status()
            for instance_state in InstanceState:
                value = instance_state.value
                instances.add_metric([name, value], status["instances"].get(value, 0))
            inflight.add_metric([name], status["inflight"])
            queued.add_metric([name], status["queued"])
            starts.add_metric(
                [name, status["runtime"]], pool.counters.get(PoolCounter.INSTANCES_STARTED, 0)
            )
            for event, n in sorted(pool.counters.items()):
                events.add_metric([name, event], n)
            one_hot(breaker, [name], BreakerState, pool.breaker.state)
            opened.add_metric([name], pool.breaker.opened)
            pss.add_metric([name], sum(pss_bytes(pid) for pid in pool.instance_pids()))
        yield from (instances, inflight, queued, starts, events, breaker, opened, pss)
        if self.zygote_memory is not None:
            total = self.zygote_memory()
            if total is not None:
                yield GaugeMetricFamily(
                    "huselet_zygote_memory_bytes",
                    "Memory of the fork runtime's zygotes (cgroup usage, or PSS), summed.",
                    value=total,
                )

    def _health(self, reports: Mapping[str, LoopReport]) -> Iterator[Metric]:
        state = gauge("huselet_health_state", "loop", "state")
        actions = counter("huselet_health_actions", "loop")
        crashes = counter("huselet_health_loop_crashes", "loop")
        for name in sorted(reports):
            report = reports[name]
            one_hot(state, [name], HealthState, report.state)
            actions.add_metric([name], report.counters.get(HealthCounter.ACTIONS, 0))
            crashes.add_metric([name], report.counters.get(HealthCounter.CRASHES, 0))
        yield from (state, actions, crashes)

    def _cache(self, stats: Mapping[str, Any]) -> Iterator[Metric]:
        hits = counter("huselet_cache_hits", "level")
        misses = counter("huselet_cache_misses", "level")
        evictions = counter("huselet_cache_evictions", "level")
        images = gauge("huselet_cache_images", "level")
        size = gauge("huselet_cache_bytes", "level")
        for level in ("memory", "disk"):
            s = stats.get(level) or {}
            hits.add_metric([level], s.get("hits", 0))
            misses.add_metric([level], s.get("misses", 0))
            evictions.add_metric([level], s.get("evictions", 0))
            images.add_metric([level], s.get("images", 0))
            size.add_metric([level], s.get("bytes", 0))
        yield from (hits, misses, evictions, images, size)
        origin = stats.get("origin") or {}
        for name, key, doc in (
            ("huselet_cache_fetches", "fetches", "Images fetched from an origin."),
            ("huselet_cache_fetch_failures", "failures", "Origin fetches that failed."),
            ("huselet_cache_fetches_coalesced", "coalesced", "Fetches joined to one under way."),
            ("huselet_cache_fetched_bytes", "bytes", "Bytes fetched from origins."),
        ):
            yield CounterMetricFamily(name, doc, value=origin.get(key, 0))
        yield CounterMetricFamily(
            "huselet_cache_quarantines",
            "Images found corrupt and quarantined.",
            value=stats.get("quarantined", 0),
        )

    def _fleet(self, d: Mapping[str, Any]) -> Iterator[Metric]:
        if d.get("mode") != "fleet":
            return
        connected = GaugeMetricFamily(
            "huselet_scheduler_link_state",
            "1 for the link's current state (starting, connecting, handshake, established, "
            "backoff).",
            labels=["state"],
        )
        for state in FLEET_STATES:
            connected.add_metric([state], 1 if d.get("state") == state else 0)
        yield connected
        for name, key, doc in (
            ("huselet_scheduler_link_epoch", "epoch", "Highest scheduler epoch seen."),
            ("huselet_scheduler_link_seq", "seq", "Last state-delta sequence number sent."),
            ("huselet_scheduler_link_acked_seq", "acked", "Last sequence number acknowledged."),
            ("huselet_scheduler_link_unacked_frames", "unacked_frames", "Deltas not yet acked."),
            ("huselet_scheduler_link_lag_seconds", "lag_s", "Time without ack progress."),
        ):
            yield GaugeMetricFamily(name, doc, value=float(d.get(key) or 0))
        for name, key, doc in (
            ("huselet_scheduler_link_resyncs", "resyncs", "Full resyncs sent."),
            ("huselet_scheduler_link_connects", "connects", "Sessions established."),
            ("huselet_scheduler_link_disconnects", "disconnects", "Sessions lost."),
            ("huselet_scheduler_commands_applied", "cmd_applied", "Scheduler commands applied."),
        ):
            yield CounterMetricFamily(name, doc, value=float(d.get(key) or 0))
        errors = CounterMetricFamily(
            "huselet_scheduler_link_errors",
            "Link failures by kind (exception class name).",
            labels=["kind"],
        )
        for kind, n in sorted((d.get("errors") or {}).items()):
            errors.add_metric([str(kind)[:64]], n)
        yield errors


def _instance_output() -> Iterator[Metric]:
    """Instance output over the rate limit, where the runtime keeps such counters
    (``huselet.runtime.output.OUTPUT_STATS``); nothing where it does not."""
    try:
        stats = importlib.import_module("huselet.runtime.output").OUTPUT_STATS
    except (ImportError, AttributeError):
        return
    for name, key, doc in (
        ("huselet_instance_output_lines", "logged_lines", "Instance output lines logged."),
        ("huselet_instance_output_dropped_lines", "dropped_lines", "Output lines dropped (rate)."),
        ("huselet_instance_output_dropped_bytes", "dropped_bytes", "Output bytes dropped (rate)."),
    ):
        value = getattr(stats, key, None)
        if isinstance(value, int | float):
            yield CounterMetricFamily(
                name, doc + " (over the per-instance rate limit)", value=value
            )


def _histogram(name: str, doc: str, hist: Histogram) -> Metric:
    from prometheus_client.core import HistogramMetricFamily

    family = HistogramMetricFamily(name, doc, labels=[])
    family.add_metric([], hist.buckets(), hist.sum)
    return family
