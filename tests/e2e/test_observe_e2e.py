"""Operators see everything: /metrics of the real daemon, one request's story in
``huselet ctl logs``, timings on every reply (issue 14's done-when tests)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest
from daemon_harness import HUSELET, Daemon, wait_until, write_config
from prometheus_client.parser import text_string_to_metric_families
from support import write_package

pytestmark = pytest.mark.e2e

HANDLER = """
import os, signal, time

def handler(event, context):
    if event.get("print"):
        print("marker", event["print"], flush=True)
    if event.get("sleep"):
        time.sleep(event["sleep"])
    if event.get("hold"):  # held until the test sends SIGUSR1 (a sandbox hides files)
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
        signal.sigtimedwait({signal.SIGUSR1}, event["hold"])
    if event.get("crash"):
        os._exit(3)
    if event.get("fail"):
        raise ValueError("it failed: " + str(event["fail"]))
    return {"request_id": context.request_id, "traceparent": context.traceparent}
"""

FUNCTIONS = """
[[functions]]
name = "echo"
package = "{root}/pkgs/app"
handler = "main:handler"
max_instances = 1
max_queue = 1
timeout_ms = 120000
[[functions]]
name = "sleepy"
package = "{root}/pkgs/app"
handler = "main:handler"
[[functions]]
name = "crashy"
package = "{root}/pkgs/app"
handler = "main:handler"
"""

METRICS = '\n[metrics]\nhttp = "127.0.0.1:0"\n'

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(url: str) -> Samples:
    """GET /metrics with a real HTTP client; parsed by prometheus_client's parser."""
    resp = httpx.get(f"{url}/metrics", timeout=30)
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"].startswith("text/plain")
    return parse(resp.text)


def parse(text: str) -> Samples:
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def series_of(samples: Samples, function: str) -> list[str]:
    return [name for name, labels in samples if ("function", function) in labels]


@pytest.fixture
def node(short_tmp: Path) -> Any:
    write_package(short_tmp, "app", HANDLER)
    config = write_config(short_tmp, FUNCTIONS.format(root=short_tmp), METRICS)
    with Daemon(config) as daemon:
        daemon.metrics_url = f"http://{daemon.ready_entry['metrics']}"
        yield daemon


def test_metrics_move_with_traffic_cold_starts_a_crash_a_429_and_a_504(node: Daemon) -> None:
    before = scrape(node.metrics_url)
    assert value(before, "huselet_build_info", version="0.1.0", node="test-node") == 1
    assert value(before, "huselet_requests_total", function="echo", status_class="2xx") == 0
    assert value(before, "huselet_queue_depth", function="echo") == 0

    with node.client() as client:
        first = client.post("/v1/invoke/echo", json={})
        assert first.status_code == 200
        assert first.headers["x-huselet-cold-start"] == "1"
        timing = first.headers["server-timing"]
        assert "queue;dur=" in timing and "start;dur=" in timing and "exec;dur=" in timing
        warm = client.post("/v1/invoke/echo", json={})
        assert warm.headers["x-huselet-cold-start"] == "0"

    # A 429: the only instance is busy, the one queue slot is taken.
    replies: dict[str, httpx.Response] = {}

    def call(key: str, event: dict[str, Any]) -> None:
        # Held past the harness client's 30 s on a loaded machine: a longer timeout.
        with httpx.Client(base_url=node.url, timeout=120) as c:
            replies[key] = c.post("/v1/invoke/echo", json=event)

    # Held until the 429 was seen: a busy request that ended by itself after a
    # fixed time let the queued one run at once on a loaded machine.
    busy = threading.Thread(target=call, args=("busy", {"hold": 100}))
    busy.start()
    assert wait_until(
        lambda: value(scrape(node.metrics_url), "huselet_requests_in_flight", function="echo") == 1,
        timeout=30,
    )
    queued = threading.Thread(target=call, args=("queued", {}))
    queued.start()
    assert wait_until(
        lambda: value(scrape(node.metrics_url), "huselet_queue_depth", function="echo") == 1,
        timeout=30,
    )
    refused = node.invoke("echo", {})
    assert refused.status_code == 429
    assert "server-timing" in refused.headers
    listed = json.loads(node.ctl("instances", "--json").stdout)
    (pid,) = [i["pid"] for i in listed if i["function"] == "echo"]
    os.kill(pid, signal.SIGUSR1)  # release the busy request
    busy.join(60)
    queued.join(60)
    assert replies["busy"].status_code == 200 and replies["queued"].status_code == 200

    # A 504: the caller's deadline passes while the handler sleeps; the instance is killed.
    # Warm first: a cold start slower than the deadline (a loaded machine) answers
    # 504 before any instance holds the request, and nothing is killed for it.
    assert node.invoke("sleepy", {}).status_code == 200
    late = node.invoke("sleepy", {"sleep": 30}, headers={"X-Huselet-Timeout-Ms": "2000"})
    assert late.status_code == 504, late.text  # a 502 would say why (its error code)
    assert "exec;dur=" in late.headers["server-timing"]
    # A crash: the instance exits mid-request.
    crash = node.invoke("crashy", {"crash": True})
    assert crash.status_code == 502 and crash.json()["error"]["code"] == "instance_lost", crash.text

    def settled() -> bool:
        s = scrape(node.metrics_url)
        return (
            value(s, "huselet_instance_deaths_total", function="sleepy", cause="deadline_kill") == 1
            and value(s, "huselet_instance_deaths_total", function="crashy", cause="exit") == 1
        )

    assert wait_until(settled, timeout=30)
    after = scrape(node.metrics_url)
    assert value(after, "huselet_requests_total", function="echo", status_class="2xx") == 4
    assert value(after, "huselet_requests_total", function="echo", status_class="4xx") == 1
    assert (
        value(
            after,
            "huselet_request_errors_total",
            function="echo",
            status="429",
            reason="queue_full",
        )
        == 1
    )
    assert (
        value(
            after,
            "huselet_request_errors_total",
            function="sleepy",
            status="504",
            reason="deadline_exceeded",
        )
        == 1
    )
    assert (
        value(
            after,
            "huselet_request_errors_total",
            function="crashy",
            status="502",
            reason="instance_lost",
        )
        == 1
    )
    assert value(after, "huselet_request_duration_seconds_count", function="echo") == 4
    assert value(after, "huselet_cold_start_requests_total", function="echo") == 1
    for fn in ("echo", "sleepy", "crashy"):
        assert value(after, "huselet_cold_starts_total", function=fn, runtime="process") >= 1
    for phase in ("code", "sandbox", "connect", "import", "first_reply"):
        count = value(
            after,
            "huselet_cold_start_phase_seconds_count",
            function="echo",
            runtime="process",
            phase=phase,
        )
        assert count == 1, phase
    assert value(after, "huselet_pool_events_total", function="sleepy", event="deadline_kills") == 1
    assert value(after, "huselet_instances", function="echo", state="idle") == 1
    assert value(after, "huselet_instance_pss_bytes", function="echo") > 0
    assert value(after, "huselet_breaker_state", function="echo", state="closed") == 1
    assert value(after, "huselet_health_state", loop="event_loop", state="ok") in (0, 1)
    assert value(after, "huselet_event_loop_lag_seconds_count") > 0
    assert value(after, "process_cpu_seconds_total") > 0
    assert value(after, "process_open_fds") > 0
    assert value(after, "huselet_cache_fetches_total") >= 1  # the package was packed/installed

    # Every family the node exposes is documented in the README's metrics table.
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    documented = set(re.findall(r"`(huselet_[a-z_]+|process_[a-z_]+)`", readme))
    exposed = {name.removesuffix("_bucket").removesuffix("_count").removesuffix("_sum")
               for name, _ in after}  # fmt: skip
    missing = {n for n in exposed if n not in documented and n.removesuffix("_total") + "_total"
               not in documented and n + "_total" not in documented}  # fmt: skip
    assert not missing, missing

    # The admin socket serves the same exposition.
    out = node.ctl("metrics")
    assert out.returncode == 0, out.stderr
    via_ctl = parse(out.stdout)
    assert value(via_ctl, "huselet_requests_total", function="echo", status_class="4xx") == 1


def test_a_removed_function_drops_its_series(node: Daemon, short_tmp: Path) -> None:
    assert node.invoke("crashy", {}).status_code == 200
    assert "huselet_requests_total" in series_of(scrape(node.metrics_url), "crashy")
    config = Path(node.config)
    text = config.read_text()
    config.write_text(text[: text.index('[[functions]]\nname = "crashy"')])
    out = node.ctl("reload", "--json")
    assert out.returncode == 0, out.stderr
    assert "crashy" in json.loads(out.stdout)["removed"]
    assert wait_until(lambda: series_of(scrape(node.metrics_url), "crashy") == [], timeout=30)


def test_one_failing_request_can_be_followed_by_its_id(node: Daemon) -> None:
    traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    resp = node.invoke(
        "echo",
        {"print": "story", "fail": "on purpose"},
        headers={"X-Request-Id": "story-1", "traceparent": traceparent},
    )
    assert resp.status_code == 502
    assert resp.headers["x-huselet-request-id"] == "story-1"

    def story() -> list[dict[str, Any]]:
        out = node.ctl("logs", "echo", "--request", "story-1", "--json")
        assert out.returncode == 0, out.stderr
        return [json.loads(line) for line in out.stdout.splitlines()]

    assert wait_until(lambda: any(r["msg"] == "handler raised" for r in story()), timeout=30)
    records = story()
    assert all(r["request_id"] == "story-1" for r in records)
    msgs = [r["msg"] for r in records]
    for expected in (
        "request admitted",
        "instance starting for request",
        "instance output",
        "handler raised",
        "request",
    ):
        assert expected in msgs, (expected, msgs)
    assert msgs.index("request admitted") < msgs.index("instance output")
    output = next(r for r in records if r["msg"] == "instance output")
    assert output["line"] == "marker story" and output["stream"] == "stdout"
    assert msgs.index("instance output") < msgs.index("handler raised")
    raised = next(r for r in records if r["msg"] == "handler raised")
    assert raised["level"] == "error"
    assert raised["traceback"].startswith("Traceback (most recent call last):")
    assert 'raise ValueError("it failed: "' in raised["traceback"]
    assert raised["error"] == "ValueError: it failed: on purpose"
    access = next(r for r in records if r["msg"] == "request")
    assert access["status"] == 502 and access["cold_start"] is True
    assert access["trace_id"] == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert all(r["ts"].endswith("Z") and "T" in r["ts"] for r in records)

    # The journal (stderr) has the same story: the traceback is ONE record, with the id.
    journal = node.logs("handler raised")
    assert len(journal) == 1 and journal[0]["request_id"] == "story-1"
    assert not any("Traceback" in line for line in node.lines if '"handler raised"' not in line)
    # The human form prints the traceback indented under its record.
    human = node.ctl("logs", "echo", "--request", "story-1")
    assert "handler raised" in human.stdout and "    Traceback" in human.stdout


def test_the_handler_sees_the_trace_context_and_a_bad_one_is_replaced(node: Daemon) -> None:
    good = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    body = node.invoke("echo", {}, headers={"traceparent": good}).json()
    trace = body["traceparent"].split("-")
    assert trace[1] == "4bf92f3577b34da6a3ce929d0e0e4736" and trace[3] == "01"
    bad = node.invoke("echo", {}, headers={"traceparent": "00-evil~-x", "X-Request-Id": "bad id!"})
    assert bad.status_code == 200
    assert "evil" not in bad.json()["traceparent"]
    assert bad.headers["x-huselet-request-id"] != "bad id!"
    assert bad.json()["request_id"] == bad.headers["x-huselet-request-id"]
    assert not any("evil" in line for line in node.lines)


def test_ctl_top_json_reports_rates_and_the_node(node: Daemon) -> None:
    assert node.invoke("echo", {}).status_code == 200
    out = subprocess.run(
        [*HUSELET, "ctl", "top", "--json", "--interval", "0.2", "--socket", node.admin_socket],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    frame = json.loads(out.stdout)
    (echo,) = [f for f in frame["functions"] if f["function"] == "echo"]
    assert echo["instances"] == {"idle": 1}
    assert frame["node"]["rss_bytes"] > 0 and frame["node"]["cpu_percent"] >= 0
    once = subprocess.run(
        [*HUSELET, "ctl", "top", "--once", "--interval", "0.2", "--socket", node.admin_socket],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert once.returncode == 0, once.stderr
    assert "FUNCTION" in once.stdout and "echo" in once.stdout
    assert max(len(line) for line in once.stdout.splitlines()) <= 100
