"""Counters are declared once per subsystem (StrEnums) and spelled nowhere else."""

from __future__ import annotations

import json
import re
from pathlib import Path

import msgpack

from huselet.central.counters import CentralCounter
from huselet.dispatch.counters import FAILED_REQUESTS, PoolCounter
from huselet.health.counters import HealthCounter

REPO = Path(__file__).resolve().parents[2]
# A counter named by a string literal: counters["ok"], counters.get("ok", ...).
SPELLED = re.compile(r"counters(\[|\.get\()\s*f?[\"']")
DECLARED_IN = (
    *("huselet/dispatch", "huselet/health", "huselet/metrics", "huselet/observe"),
    *("huselet/code", "huselet/central", "huselet/gateway"),
)


def test_no_pool_or_health_counter_is_spelled_as_a_string() -> None:
    spelled = [
        f"{path.relative_to(REPO)}:{n}: {line.strip()}"
        for folder in DECLARED_IN
        for path in sorted((REPO / folder).rglob("*.py"))
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if SPELLED.search(line)
    ]
    assert spelled == []


def test_the_checker_sees_a_spelled_counter() -> None:
    assert SPELLED.search('pool.counters["ok"] += 1')
    assert SPELLED.search("report.counters.get('actions', 0)")
    assert not SPELLED.search("pool.counters[PoolCounter.OK] += 1")


def test_members_are_their_words_on_every_wire() -> None:
    # Status JSON, admin msgpack and metric labels see the plain words.
    counts = {PoolCounter.OK: 2, HealthCounter.ACTIONS: 1}
    assert json.dumps(counts) == '{"ok": 2, "actions": 1}'
    assert msgpack.unpackb(msgpack.packb(counts)) == {"ok": 2, "actions": 1}
    assert f"{PoolCounter.DEADLINE_KILLS}" == "deadline_kills"


def test_failed_requests_are_outcomes_of_accepted_requests() -> None:
    admission = {PoolCounter.ACCEPTED, PoolCounter.REJECTED_QUEUE_FULL, PoolCounter.OK}
    assert not admission & set(FAILED_REQUESTS)
    assert len(set(FAILED_REQUESTS)) == len(FAILED_REQUESTS)


def test_a_per_kind_counter_keeps_its_dotted_key() -> None:
    assert CentralCounter.HANDSHAKE_FAILED.by("TimeoutError") == "handshake_failed.TimeoutError"
    assert CentralCounter.CONNECTS.by("resume") == "connects.resume"
