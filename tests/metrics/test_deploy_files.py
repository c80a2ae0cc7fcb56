"""The shipped dashboard and alert rules refer only to metrics the README documents."""

from __future__ import annotations

import json
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
METRIC = re.compile(r"\b((?:huselet|process)_[a-z_]+)")


def documented() -> set[str]:
    return set(re.findall(r"`((?:huselet|process)_[a-z_]+)`", (REPO / "README.md").read_text()))


def base_name(name: str) -> str:
    for suffix in ("_bucket", "_count", "_sum"):
        name = name.removesuffix(suffix)
    return name


def test_the_dashboard_is_valid_json_over_documented_metrics() -> None:
    dash = json.loads((REPO / "deploy" / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for panel in dash["panels"] for t in panel["targets"]]
    assert len(exprs) >= 20
    names = {base_name(n) for e in exprs for n in METRIC.findall(e)}
    assert names - documented() == set()
    ids = [panel["id"] for panel in dash["panels"]]
    assert len(ids) == len(set(ids))


def test_alert_rules_use_documented_metrics() -> None:
    text = (REPO / "deploy" / "prometheus-alerts.yml").read_text()
    alerts = re.findall(r"^\s+- alert: (\w+)$", text, re.M)
    assert len(alerts) == len(set(alerts)) >= 8
    names = {base_name(n) for n in METRIC.findall(text)}
    assert names and names - documented() == set()
    # Every rule has an expression and a summary.
    assert text.count("expr:") == len(alerts) and text.count("summary:") == len(alerts)
