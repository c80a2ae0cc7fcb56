"""Property: after any sequence of faults and a clean period, both sides agree.

Faults: dropped, duplicated and reordered frames, disconnects, scheduler
failover to a new leader with a higher epoch (which re-issues every command
ever issued, under the same ids), reconnects to a deposed leader, and a
corrupted scheduler view. Afterwards the node's resources equal the current
scheduler's view and every command was executed exactly once and answered.
Small replay buffers make buffer overflow (→ snapshot / command-stream reset)
part of the search space.
"""

from __future__ import annotations

from typing import Any

from delta_sim import NODE_ID, Sim, node_config, scheduler_config
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

KINDS = ["function", "instance", "image", "capacity", "health"]
# a fault hits the frame `offset` frames from now, whatever it turns out to be
FAULT = st.tuples(st.just("fault"), st.sampled_from(["drop", "dup", "swap"]), st.integers(0, 6))

ADVANCE = st.tuples(st.just("advance"), st.floats(0.01, 4.0))

ops = st.lists(
    st.one_of(
        st.tuples(st.just("set"), st.sampled_from(KINDS), st.integers(0, 5), st.integers(0, 99)),
        st.tuples(st.just("remove"), st.sampled_from(KINDS), st.integers(0, 5)),
        st.tuples(st.just("burst"), st.integers(1, 200)),
        st.tuples(st.just("command"), st.sampled_from(["deploy", "remove", "drain"])),
        ADVANCE,
        ADVANCE,  # time must pass for batches, heartbeats and timeouts to happen
        ADVANCE,
        FAULT,
        FAULT,  # listed thrice: faults are what this test is about
        FAULT,
        st.tuples(st.just("disconnect")),
        st.tuples(st.just("failover")),
        st.tuples(st.just("stale_connect")),
        st.tuples(st.just("complete")),
        st.tuples(st.just("corrupt_view")),
    ),
    min_size=8,
    max_size=60,
)


def run(sim: Sim, op: tuple[Any, ...]) -> None:
    name = op[0]
    if name == "set":
        sim.change(op[1], f"r{op[2]}", {"v": op[3]})
    elif name == "remove":
        sim.change(op[1], f"r{op[2]}", None)
    elif name == "burst":
        for i in range(op[1]):
            sim.node.queue_delta("instance", f"i{i % 50}", {"n": i}, sim.now)
        sim.pump()
    elif name == "command":
        n = len(sim.issued)
        if op[1] == "deploy":
            sim.issue("deploy_function", {"name": f"fn{n % 4}", "image": f"sha256:{n}"})
        elif op[1] == "remove":
            sim.issue("remove_function", {"name": f"fn{n % 4}"})
        else:
            sim.issue("drain", {"n": n})
    elif name == "advance":
        sim.advance(op[1])
    elif name == "fault":
        sim.fault_at.setdefault(sim.frame_no + op[2], op[1])
    elif name == "disconnect":
        sim.disconnect("test")
    elif name == "failover":
        sim.failover()
    elif name == "stale_connect":
        # The node dials a deposed leader: fenced if the node has seen the new
        # epoch; otherwise served briefly until the deposed leader steps down.
        if len(sim.fleets) > 1:
            sim.connect(sim.fleets[-2])
            sim.pump()
            sim.disconnect("deposed leader steps down")
    elif name == "complete":
        sim.complete_all()
    elif name == "corrupt_view":
        view = sim.fleet.view(NODE_ID)
        if view is not None:
            view.upsert("health", "ghost", 1 << 40, {"bit": "flip"})


@settings(
    max_examples=1000,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(ops=ops)
def test_any_faults_then_clean_period_converge(ops: list[tuple[Any, ...]]) -> None:
    sim = Sim(
        node_cfg=node_config(replay_max_frames=6, max_batch_items=16, max_inflight=3),
        sched_cfg=scheduler_config(replay_max_frames=3),
    )
    sim.connect()
    sim.pump()
    for op in ops:
        run(sim, op)
    sim.settle(30)
    sim.assert_converged()
    # Coverage report (pytest --hypothesis-show-statistics), not assertions.
    event(f"snapshots applied: {min(sim.snapshots, 3)}{'+' if sim.snapshots >= 3 else ''}")
    for error in {type(e).__name__ for e in sim.errors}:
        event(f"repaired after {error}")
    for fault, tag in set(sim.faults_applied):
        event(f"{fault} {tag}")
    if sim.mismatches:
        event("digest mismatch → resync")
    if sim.node.state.replay.evicted:
        event("node replay buffer overflowed")
