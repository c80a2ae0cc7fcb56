"""Print the frames of PROTOCOL.md's worked example (§15), produced by the reference machines.

    python -m protocol.examples.worked_example

A node ``node-a`` (one function ``hello`` from its own config) connects to
scheduler ``sched-a`` at epoch 7, gets a ``deploy_function`` command with a
real body, answers it, and heartbeats. Pure: no IO beyond printing, fixed
clock, fixed ids — the output is reproducible byte for byte.
"""

from __future__ import annotations

import msgpack

from protocol.delta import FleetState, NodeConfig, NodeSession, SchedulerConfig, SchedulerSession


def frames(data: bytes) -> list[bytes]:
    out = []
    while data:
        n = int.from_bytes(data[:4], "big")
        out.append(data[: 4 + n])
        data = data[4 + n :]
    return out


def show(direction: str, data: bytes) -> None:
    for frame in frames(data):
        body = msgpack.unpackb(frame[4:], raw=False)
        print(f"{direction} {body.get('t')}: {body}")
        print(f"    hex ({len(frame)} bytes): {frame.hex()}")


def drain(session: NodeSession | SchedulerSession) -> int:
    """Process the events the session has (frames to send are produced meanwhile)."""
    n = 0
    while session.next_event() is not None:
        n += 1
    return n


def main() -> None:
    now = 100.0
    node = NodeSession(NodeConfig(node_id="node-a", boot_id="boot-1", features=0))
    fleet = FleetState(
        SchedulerConfig(
            scheduler_id="sched-a", epoch=7, heartbeat_interval=1.0, lease_ttl=5.0, features=0
        )
    )
    sched = SchedulerSession(fleet, now)
    node.queue_delta("function", "hello", {"version": 0, "source": "config"}, now)
    node.connect(now)
    hello = node.data_to_send()
    show("N->S", hello)
    sched.receive_data(hello, now)
    drain(sched)
    welcome = sched.data_to_send()
    show("S->N", welcome)
    node.receive_data(welcome, now)
    drain(node)
    snapshot = node.data_to_send()
    show("N->S", snapshot)
    sched.receive_data(snapshot, now)
    drain(sched)
    spec = {"name": "resize", "handler": "main:handler", "digest": "ab" * 32, "memory_mb": 128}
    fleet.issue_command(
        "node-a", "deploy_function", {"version": 1, "spec": spec}, cmd_id="sched-a:7:1"
    )
    cmd = sched.data_to_send()
    show("S->N", cmd)
    node.receive_data(cmd, now)
    drain(node)
    now += 0.2
    node.queue_delta("function", "resize", {"version": 1, "source": "scheduler"}, now)
    node.complete_command("sched-a:7:1", {"applied": True, "version": 1}, now)
    node.flush(now)
    batch = node.data_to_send()
    show("N->S", batch)
    sched.receive_data(batch, now)
    drain(sched)
    now += 1.0
    node.tick(now)
    sched.tick(now)
    show("N->S", node.data_to_send())
    show("S->N", sched.data_to_send())


if __name__ == "__main__":
    main()
