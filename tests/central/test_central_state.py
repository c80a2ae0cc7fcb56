"""The central scheduler's durable parts: journal, leader lock and epoch, placement rules."""

from __future__ import annotations

from pathlib import Path

import pytest

from huselet.central.journal import FunctionEntry, Journal
from huselet.central.leader import LeaderLock
from huselet.central.placement import (
    NodeInfo,
    PlacementError,
    Reported,
    choose_nodes,
    reconcile,
    reserved_by_node,
)

SPEC = {"name": "f", "handler": "main:handler", "package": "/p", "memory_mb": 100}


def test_journal_replays_functions_and_pending_commands(tmp_path: Path) -> None:
    j = Journal(tmp_path / "j", fsync=False)
    j.load()
    j.open()
    j.append({"t": "fn", "name": "f", "version": 1, "spec": SPEC, "nodes": ["n1", "n2"]})
    j.append(
        {"t": "cmd", "id": "a:1:1", "node": "n1", "kind": "deploy_function", "body": {}, "fn": "f"}
    )
    j.append(
        {"t": "cmd", "id": "a:1:2", "node": "n2", "kind": "deploy_function", "body": {}, "fn": "f"}
    )
    j.append({"t": "done", "id": "a:1:1", "status": "ok"})
    j.append({"t": "quota", "name": "f", "limits": {"max_instances": 2}})
    j.close()
    with open(tmp_path / "j", "ab") as f:
        f.write(b'{"t":"cmd","id":"a:1:3"')  # torn by a crash mid-write
    again = Journal(tmp_path / "j", fsync=False)
    state = again.load()
    assert again.torn == 1
    assert list(state.pending) == ["a:1:2"] and state.pending["a:1:2"].function == "f"
    assert state.functions["f"].quota == {"max_instances": 2}
    again.open()  # compacts
    assert again.records == 3  # ver, fn, the one pending cmd
    again.append({"t": "rm", "name": "f", "version": 1})
    again.close()
    third = Journal(tmp_path / "j", fsync=False)
    state = third.load()
    assert state.functions == {} and state.versions == {"f": 1} and third.torn == 0


def test_journal_compacts_when_it_grows(tmp_path: Path) -> None:
    j = Journal(tmp_path / "j", fsync=False, compact_after=50)
    j.load()
    j.open()
    for i in range(200):
        j.append({"t": "cmd", "id": f"c{i}", "node": "n", "kind": "drain", "body": {}})
        j.append({"t": "done", "id": f"c{i}", "status": "ok"})
    assert j.records <= 51
    assert len((tmp_path / "j").read_bytes().splitlines()) <= 51


def test_one_leader_at_a_time_and_every_leader_a_higher_epoch(tmp_path: Path) -> None:
    a, b = LeaderLock(tmp_path), LeaderLock(tmp_path)
    assert a.try_acquire() and not b.try_acquire()
    with pytest.raises(RuntimeError):
        b.next_epoch()
    assert a.next_epoch() == 1
    a.release()  # the process died: the kernel drops its flock
    assert b.try_acquire()
    assert b.next_epoch() == 2
    b.announce({"scheduler_id": "b", "epoch": 2})
    assert a.leader_info() == {"scheduler_id": "b", "epoch": 2}


def node(nid: str, mb: int, *, connected: bool = True, placements: str = "open") -> NodeInfo:
    return NodeInfo(nid, connected, placements, mb)


def test_placement_prefers_free_memory_and_skips_closed_nodes() -> None:
    nodes = [
        node("a", 1000),
        node("b", 4000),
        node("c", 8000, placements="drained"),
        node("d", 8000, connected=False),
        node("e", 50),
    ]
    assert choose_nodes(nodes, SPEC, {}) == ["b", "a"]
    assert choose_nodes(nodes, SPEC, {"b": 3500}, replicas=1) == ["a"]
    with pytest.raises(PlacementError):
        choose_nodes(nodes, SPEC, {}, replicas=3)
    with pytest.raises(PlacementError):
        choose_nodes(nodes, {**SPEC, "memory_mb": 100, "min_instances": 50}, {})
    entry = FunctionEntry("f", 1, {**SPEC, "min_instances": 3}, ["a", "b"])
    assert reserved_by_node([entry]) == {"a": 300, "b": 300}


def test_reconcile_deploys_updates_removes_and_applies_quotas() -> None:
    desired = {
        "new": FunctionEntry("new", 1, SPEC, ["n1"]),
        "old": FunctionEntry("old", 3, SPEC, ["n1"]),
        "same": FunctionEntry("same", 2, SPEC, ["n1"], quota={"max_instances": 2}),
        "elsewhere": FunctionEntry("elsewhere", 1, SPEC, ["n2"]),
    }
    reported = {
        "old": Reported(2, "scheduler"),
        "same": Reported(2, "scheduler", max_instances=8, min_instances=0),
        "gone": Reported(1, "scheduler"),
        "local": Reported(0, "config"),
    }
    actions = reconcile("n1", reported, desired, [], {}, now=0.0)
    assert {(a.kind, a.function) for a in actions} == {
        ("deploy_function", "new"),
        ("update_function", "old"),
        ("set_quota", "same"),
        ("remove_function", "gone"),
    }
    # One command per function at a time, and a failed version waits before a retry.
    assert reconcile("n1", reported, desired, ["new", "old", "same", "gone"], {}, 0.0) == []
    failed = {"new": (1, 100.0)}
    later = reconcile("n1", {}, {"new": desired["new"]}, [], failed, now=110.0)
    assert later == []
    assert len(reconcile("n1", {}, {"new": desired["new"]}, [], failed, now=200.0)) == 1
