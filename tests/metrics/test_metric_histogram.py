"""The lock-free histogram and its exposition through prometheus_client."""

from __future__ import annotations

from prometheus_client import CollectorRegistry
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from huselet.metrics.histogram import Histogram


class One:
    def __init__(self, hist: Histogram) -> None:
        self.hist = hist

    def collect(self):  # type: ignore[no-untyped-def]
        family = HistogramMetricFamily("t_seconds", "test", labels=["function"])
        family.add_metric(["f"], self.hist.buckets(), self.hist.sum)
        yield family


def test_buckets_are_cumulative_with_le_semantics() -> None:
    hist = Histogram((0.1, 1.0))
    for value in (0.05, 0.1, 0.5, 1.0, 3.0):
        hist.observe(value)
    assert hist.buckets() == [("0.1", 2), ("1.0", 4), ("+Inf", 5)]
    assert hist.count == 5 and abs(hist.sum - 4.65) < 1e-9
    assert hist.quantile(0.5) == 1.0 and hist.quantile(1.0) == float("inf")
    assert Histogram((1.0,)).quantile(0.5) is None


def test_exposition_parses_back() -> None:
    hist = Histogram((0.1, 1.0))
    hist.observe(0.2)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(One(hist))  # type: ignore[arg-type]
    (family,) = text_string_to_metric_families(generate_latest(registry).decode())
    samples = {(s.name, s.labels.get("le")): s.value for s in family.samples}
    assert samples[("t_seconds_bucket", "0.1")] == 0
    assert samples[("t_seconds_bucket", "1.0")] == 1
    assert samples[("t_seconds_count", None)] == 1
