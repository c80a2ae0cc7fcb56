"""``huselet ctl top``: the daemon's raw sample, and the client's view of two samples.

The daemon answers ``top`` with cumulative numbers (counters, histogram
buckets, CPU seconds); the client takes two samples and turns their
difference into rates and percentiles over the interval — so the view shows
what is happening now, not averages since start, and the daemon keeps no
per-viewer state.
"""

from __future__ import annotations

import os
import resource
import time
from collections.abc import Mapping
from typing import Any

from huselet.dispatch.counters import PoolCounter

ERROR_KEYS = (
    PoolCounter.HANDLER_ERRORS,
    PoolCounter.INSTANCE_LOST,
    PoolCounter.FAILED_START,
    PoolCounter.DEADLINE_EXCEEDED,
)


def node_sample() -> dict[str, Any]:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    rss = 0
    try:
        with open("/proc/self/statm") as f:
            rss = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        pass
    return {"at": time.monotonic(), "cpu_s": usage.ru_utime + usage.ru_stime, "rss_bytes": rss}


def _quantile(bounds: list[float], counts: list[int], q: float) -> float | None:
    total = sum(counts)
    if total <= 0:
        return None
    running = 0
    for bound, n in zip([*bounds, float("inf")], counts, strict=False):
        running += n
        if running >= q * total:
            return bound
    return None


def view(before: Mapping[str, Any], after: Mapping[str, Any]) -> dict[str, Any]:
    """Rates and interval percentiles from two ``top`` samples of one daemon."""
    dt = max(1e-6, after["node"]["at"] - before["node"]["at"])
    old = {f["function"]: f for f in before.get("functions", [])}
    rows = []
    for f in after.get("functions", []):
        prev = old.get(f["function"], {})

        def delta(key: str, f: Mapping[str, Any] = f, prev: Mapping[str, Any] = prev) -> float:
            return max(0.0, float(f.get(key, 0)) - float(prev.get(key, 0)))

        counts = f.get("latency_counts")
        p50 = p99 = None
        if counts is not None:
            was = prev.get("latency_counts") or [0] * len(counts)
            diff = [max(0, a - b) for a, b in zip(counts, was, strict=False)]
            bounds = f.get("latency_bounds") or []
            p50, p99 = _quantile(bounds, diff, 0.5), _quantile(bounds, diff, 0.99)
        rows.append(
            {
                "function": f["function"],
                "rps": round(delta("requests") / dt, 2),
                "p50_ms": None if p50 is None else round(p50 * 1000, 3),
                "p99_ms": None if p99 is None else round(p99 * 1000, 3),
                "queued": f.get("queued", 0),
                "inflight": f.get("inflight", 0),
                "instances": f.get("instances", {}),
                "cold_starts_per_s": round(delta("cold_starts") / dt, 2),
                "errors_per_s": round(delta("errors") / dt, 2),
            }
        )
    node_before, node_after = before["node"], after["node"]
    return {
        "interval_s": round(dt, 3),
        "node": {
            "cpu_percent": round(100 * (node_after["cpu_s"] - node_before["cpu_s"]) / dt, 1),
            "rss_bytes": node_after.get("rss_bytes"),
            "lag_ms": node_after.get("lag_ms"),
            "max_lag_ms": node_after.get("max_lag_ms"),
            "instances": sum(sum(r["instances"].values()) for r in rows),
        },
        "functions": rows,
    }


def function_sample(pool: Any, requests: Any) -> dict[str, Any]:
    """One function's cumulative numbers (``requests``: its FunctionRequests or None)."""
    status = pool.status()
    counters = status["counters"]
    sample: dict[str, Any] = {
        "function": pool.name,
        "requests": counters.get(PoolCounter.ACCEPTED, 0),
        "queued": status["queued"],
        "inflight": status["inflight"],
        "instances": {k: v for k, v in status["instances"].items() if v},
        "cold_starts": counters.get(PoolCounter.INSTANCES_STARTED, 0),
        "errors": sum(counters.get(k, 0) for k in ERROR_KEYS)
        + counters.get(PoolCounter.REJECTED_QUEUE_FULL, 0)
        + counters.get(PoolCounter.REJECTED_BREAKER_OPEN, 0),
    }
    if requests is not None:
        sample["latency_bounds"] = list(requests.total.bounds)
        sample["latency_counts"] = list(requests.total.counts)
    return sample
