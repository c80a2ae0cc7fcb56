"""A pool's status counts its instances by state and the images they run as they
change (a real daemon): the per-function summary that operators and dashboards
poll walks no instance, and says what a walk of the instances would."""

from __future__ import annotations

import json
import os
import signal
import threading
from collections import Counter
from pathlib import Path
from typing import Any

from daemon_harness import Daemon, function_toml, wait_until, write_config
from support import GATE_WAIT, open_gate, write_package

# Held at a gate in the instance's private /tmp until the test opens it: busy
# for as long as the test looks, however slowly the machine lets it look.
HELD = (
    GATE_WAIT
    + """
def handler(event, ctx):
    if event.get("gate"):
        wait_at_gate(event["gate"])
    return {}
"""
)


def summary(d: Daemon, name: str) -> dict[str, Any]:
    out = d.ctl("functions", "--json")
    assert out.returncode == 0, out.stderr
    (row,) = [r for r in json.loads(out.stdout) if r["name"] == name]
    return row  # type: ignore[no-any-return]


def agrees(d: Daemon, name: str) -> bool:
    """The summary says what the instance list says: instances by state, their images."""
    row = summary(d, name)
    out = d.ctl("instances", "--json")
    assert out.returncode == 0, out.stderr
    rows = [r for r in json.loads(out.stdout) if r["function"] == name]
    states = Counter(r["state"] for r in rows)
    counted = {s: n for s, n in row["instances"].items() if n}
    return counted == dict(states) and set(row["code"]) == {r["code"] for r in rows if r["code"]}


def test_counts_follow_starts_requests_and_stops(short_tmp: Path) -> None:
    write_package(short_tmp, "f", HELD)
    write_package(short_tmp, "g", HELD)
    gate = f"/tmp/gate-{short_tmp.name}"
    blocks = function_toml("f", min_instances=2, max_instances=3, idle_timeout_ms=1000)
    blocks += function_toml("g", max_instances=1, idle_timeout_ms=1000)
    with Daemon(write_config(short_tmp, blocks)) as d:
        assert wait_until(lambda: summary(d, "f")["instances"]["idle"] == 2)
        assert wait_until(lambda: agrees(d, "f"))  # two ctl calls: a state may change between
        assert len(summary(d, "f")["code"]) == 1  # the packed image, by digest
        # A request on each, and one more: a third instance starts, all busy.
        calls = [threading.Thread(target=d.invoke_ok, args=("f", {"gate": gate})) for _ in range(3)]
        for call in calls:
            call.start()
        assert wait_until(lambda: summary(d, "f")["instances"]["busy"] == 3)
        assert wait_until(lambda: agrees(d, "f"))
        assert open_gate(d.instance_pids(), gate) == 3
        for call in calls:
            call.join()
        # The third idles out (min_instances 2): counted out of every state.
        assert wait_until(lambda: sum(summary(d, "f")["instances"].values()) == 2)
        assert wait_until(lambda: agrees(d, "f"))
        # Killed: counted out, their replacements in, the image still listed once.
        for pid in d.instance_pids():
            os.kill(pid, signal.SIGKILL)
        assert wait_until(lambda: summary(d, "f")["counters"].get("instances_lost", 0) == 2)
        assert wait_until(lambda: summary(d, "f")["instances"]["idle"] == 2)
        assert wait_until(lambda: agrees(d, "f"))
        assert len(summary(d, "f")["code"]) == 1
        # A function whose only instance idled out runs no image any more. (Its
        # image is listed while it runs: held, it cannot idle out before a look.)
        call = threading.Thread(target=d.invoke_ok, args=("g", {"gate": gate}))
        call.start()
        assert wait_until(lambda: summary(d, "g")["instances"]["busy"] == 1)
        assert len(summary(d, "g")["code"]) == 1
        assert open_gate(d.instance_pids(), gate)
        call.join()
        assert wait_until(lambda: sum(summary(d, "g")["instances"].values()) == 0)
        assert summary(d, "g")["code"] == []
        assert wait_until(lambda: agrees(d, "g"))
