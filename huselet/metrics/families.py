"""The node's labelled metric families by name: each one's help text, written once.

The collectors build a fresh family per scrape; :func:`gauge`, :func:`counter`
and :func:`histogram` take the name and label names and look the help text up
here, so a metric's name and meaning live in one table (the README's metrics
section lists the same names). :func:`one_hot` fills a "1 for the current
state" gauge.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from enum import Enum

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)

HELP = {
    # Pools (read at scrape time).
    "huselet_instances": "Instances by state (starting, idle, busy, stopping).",
    "huselet_requests_in_flight": "Invocations dispatched to an instance and not yet answered.",
    "huselet_queue_depth": "Invocations waiting for an instance.",
    "huselet_cold_starts": "Instance starts begun (every start is a cold start).",
    "huselet_pool_events": "Every counter a function's pool keeps (ok, handler_errors, "
    "rejected_queue_full, deadline_kills, retried, ...), as in `huselet ctl status --json`.",
    "huselet_breaker_state": "1 for the circuit breaker's current state (closed, open, half_open).",
    "huselet_breaker_opened": "Times the breaker opened.",
    "huselet_instance_pss_bytes": "Proportional set size of the function's instances, summed.",
    # Admission (the gateway), by tenant.
    "huselet_admission_refusals": "Invocations refused at admission, by reason (unknown_key, "
    "bad_signature, replay, stale_timestamp, forbidden_function, tenant_rate, ...) and tenant.",
    "huselet_tenant_requests": "Invocations admitted per tenant.",
    "huselet_tenant_throttled": "Invocations refused 429 per tenant.",
    "huselet_tenant_in_flight": "Admitted invocations not yet answered.",
    "huselet_tenant_replay_cache_bytes": "Bytes of the tenant's replay cache in use "
    "(bounded per tenant by auth.replay_cache_mb).",
    "huselet_auth_verify_seconds": "CPU seconds of the sampled signature verifications, by step "
    "(signature: the head; body: its SHA-256); divide by huselet_auth_verify_samples.",
    "huselet_auth_verify_samples": "Signed requests whose verification was timed (one in 16).",
    # The package cache, by level (memory, disk).
    "huselet_cache_hits": "Image lookups served, by level.",
    "huselet_cache_misses": "Image lookups not served, by level.",
    "huselet_cache_evictions": "Images evicted, by level.",
    "huselet_cache_images": "Images held, by level.",
    "huselet_cache_bytes": "Bytes held, by level.",
    # Health loops.
    "huselet_health_state": "1 for each health loop's current state (ok, degraded, failing).",
    "huselet_health_actions": "Healing actions a loop took.",
    "huselet_health_loop_crashes": "Times a health loop crashed.",
    # Instances (observed as they start and stop).
    "huselet_cold_start_phase_seconds": "Duration of each phase of an instance start "
    "(code, sandbox, connect, import, first_reply).",
    "huselet_cold_start_failures": "Instance starts that failed, by reason "
    "(fetch, sandbox, timeout, import, oom, crash).",
    "huselet_instance_deaths": "Instances that ended unplanned, by cause "
    "(exit, signal, oom, deadline_kill, heartbeat, frozen, link_error, other).",
    "huselet_instance_stops": "Instances the node stopped on purpose, by reason "
    "(idle, reaped, served, ...).",
}


def gauge(name: str, *labels: str) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, HELP[name], labels=list(labels))


def counter(name: str, *labels: str) -> CounterMetricFamily:
    return CounterMetricFamily(name, HELP[name], labels=list(labels))


def histogram(name: str, *labels: str) -> HistogramMetricFamily:
    return HistogramMetricFamily(name, HELP[name], labels=list(labels))


def one_hot(
    family: GaugeMetricFamily, labels: Sequence[str], states: Iterable[Enum], current: Enum
) -> None:
    """One sample per state: 1 for ``current``, 0 for the others (label: the state's value)."""
    for state in states:
        family.add_metric([*labels, str(state.value)], 1 if state is current else 0)
