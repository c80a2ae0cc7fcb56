"""Request metrics per function: outcomes, refusals and duration histograms.

Observed on the hot path by :mod:`huselet.observe.story` (a dict lookup, a
few bucket increments) and turned into metric families at scrape time. Only
functions the dispatcher has a pool for are ever observed, so label values
come from configured names; a removed function's series are pruned at the
next scrape.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Iterator

from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric

from huselet.metrics.histogram import REQUEST_BUCKETS, Histogram

STATUS_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx")


class FunctionRequests:
    """One function's request metrics."""

    __slots__ = ("cold", "exec", "queue", "rejections", "start", "statuses", "total")

    def __init__(self) -> None:
        self.queue = Histogram(REQUEST_BUCKETS)
        self.start = Histogram(REQUEST_BUCKETS)
        self.exec = Histogram(REQUEST_BUCKETS)
        self.total = Histogram(REQUEST_BUCKETS)
        self.statuses: Counter[int] = Counter()
        # (status, error code): the codes are the typed errors' own, a fixed set.
        self.rejections: Counter[tuple[int, str]] = Counter()
        self.cold = 0


class RequestMetrics:
    def __init__(self) -> None:
        self.functions: dict[str, FunctionRequests] = {}

    def of(self, function: str) -> FunctionRequests:
        metrics = self.functions.get(function)
        if metrics is None:
            metrics = self.functions[function] = FunctionRequests()
        return metrics

    def prune(self, keep: Collection[str]) -> None:
        for name in [n for n in self.functions if n not in keep]:
            del self.functions[name]

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            "huselet_requests",
            "Invocations answered, by function and HTTP status class.",
            labels=["function", "status_class"],
        )
        rejections = CounterMetricFamily(
            "huselet_request_errors",
            "Invocations answered with an error, by status and error code "
            "(queue_full, unavailable, deadline_exceeded, draining, handler_error, ...).",
            labels=["function", "status", "reason"],
        )
        cold = CounterMetricFamily(
            "huselet_cold_start_requests",
            "Invocations that waited for a new instance to start.",
            labels=["function"],
        )
        histograms = {
            "queue": HistogramMetricFamily(
                "huselet_request_queue_seconds",
                "Time from admission to dispatch to an instance, instance start excluded.",
                labels=["function"],
            ),
            "start": HistogramMetricFamily(
                "huselet_request_start_wait_seconds",
                "Time a request waited for a new instance to become ready (0 when warm).",
                labels=["function"],
            ),
            "exec": HistogramMetricFamily(
                "huselet_request_execution_seconds",
                "Time from dispatch to the instance's result.",
                labels=["function"],
            ),
            "total": HistogramMetricFamily(
                "huselet_request_duration_seconds",
                "Time from admission to the result or error, as the dispatcher saw it.",
                labels=["function"],
            ),
        }
        for name, m in sorted(self.functions.items()):
            by_class: Counter[str] = Counter()
            for status, n in m.statuses.items():
                by_class[f"{status // 100}xx"] += n
            for cls in STATUS_CLASSES:
                if by_class.get(cls):
                    requests.add_metric([name, cls], by_class[cls])
            for (status, reason), n in sorted(m.rejections.items()):
                rejections.add_metric([name, str(status), reason], n)
            cold.add_metric([name], m.cold)
            for key, family in histograms.items():
                hist: Histogram = getattr(m, key)
                family.add_metric([name], hist.buckets(), hist.sum)
        yield requests
        yield rejections
        yield cold
        yield from histograms.values()
