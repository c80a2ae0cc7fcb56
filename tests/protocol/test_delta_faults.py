"""Every single fault at every frame of a scripted exchange, then a clean period.

The scripted exchange covers handshake, snapshot, batches, commands, results,
heartbeats and removals. For each frame index and each fault (drop, duplicate,
swap with the next frame, disconnect right after it — reconnecting with *new*
machine objects built on the persisted node state), the two ends must end up
with the same resources and every command executed exactly once.
"""

from __future__ import annotations

import pytest
from delta_sim import Sim, node_config

from protocol.delta import SequenceGap


def scenario(sim: Sim) -> None:
    sim.connect()
    sim.pump()
    for i in range(4):
        sim.change("function", f"f{i}", {"mem": 128 * (i + 1)})
    sim.change("capacity", "node", {"cpu": 2000})
    sim.advance(0.1)
    sim.issue("deploy_function", {"name": "g1", "image": "sha256:aa"})
    sim.issue("drain", {})
    sim.advance(0.1)
    sim.complete_all()
    sim.advance(0.1)
    sim.change("function", "f1", {"mem": 1})
    sim.change("function", "f2", None)
    sim.advance(1.1)  # heartbeats both ways
    sim.issue("remove_function", {"name": "f3"})
    sim.advance(0.1)
    sim.complete_all()
    sim.advance(0.1)
    for i in range(40):  # more than one batch (max_batch_items=16 below)
        sim.node.queue_delta("instance", f"i{i}", {"state": "warm"}, sim.now)
    sim.issue("set_quota", {"memory_mb": 4096})
    sim.advance(0.1)
    sim.complete_all()
    sim.advance(1.1)


def make_sim(fresh_objects: bool = True) -> Sim:
    return Sim(node_cfg=node_config(max_batch_items=16), fresh_objects=fresh_objects)


def clean_run() -> Sim:
    sim = make_sim()
    scenario(sim)
    return sim


def test_clean_run_converges_without_errors() -> None:
    sim = clean_run()
    sim.settle(5)
    sim.assert_converged()
    assert sim.errors == [] and sim.closes == []
    assert sim.frame_no >= 20  # the scenario really exchanges frames


FRAMES = clean_run().frame_no


@pytest.mark.parametrize("fault", ["drop", "dup", "swap", "disconnect"])
@pytest.mark.parametrize("fresh_objects", [True, False])
def test_single_fault_at_every_frame_converges(fault: str, fresh_objects: bool) -> None:
    disturbed = 0
    gaps = 0
    for index in range(FRAMES):
        sim = make_sim(fresh_objects)
        sim.fault_at[index] = fault
        scenario(sim)
        disturbed += bool(sim.errors or sim.closes or sim.connects > 1)
        gaps += any(isinstance(e, SequenceGap) for e in sim.errors)
        sim.settle()
        try:
            sim.assert_converged()
        except AssertionError as exc:
            raise AssertionError(f"{fault} at frame {index}: {exc}; log {sim.log}") from exc
    # The faults were real: most of them broke something that had to be repaired.
    if fault in ("drop", "disconnect"):
        assert disturbed >= FRAMES // 2
    if fault == "drop":
        assert gaps > 0


def test_two_faults_at_every_adjacent_pair_converges() -> None:
    for index in range(FRAMES - 1):
        for first, second in (("drop", "drop"), ("dup", "swap"), ("swap", "drop")):
            sim = make_sim()
            sim.fault_at[index] = first
            sim.fault_at[index + 1] = second
            scenario(sim)
            sim.settle()
            sim.assert_converged()
