"""Hypothesis schedules of pauses, kills and restarts of three schedulers on one real etcd.

Whatever the schedule, at every instant at most one scheduler believes it
leads (checked every 20 ms by one observer on one clock), every scheduler that
still has a term keeps trying guarded writes (etcd refuses the deposed ones),
and after the schedule someone leads and writes again. "Pause" stops a scheduler's lease
renewal (like SIGSTOP: its clock runs on, it does nothing); "kill" drops it
without revoking its lease (like SIGKILL); "restart" makes it campaign again.
"""

from __future__ import annotations

import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from huselet.central.election import Election
from huselet.central.embedded import PrivateEtcd
from huselet.central.errors import Deposed, LeadershipLost
from huselet.central.etcd import EtcdClient, EtcdError
from huselet.central.store import EtcdStore

TTL = 2
ACTIONS = st.lists(
    st.tuples(
        st.integers(0, 2),
        st.sampled_from(["pause", "kill", "restart"]),
        st.floats(0.0, 2.5 * TTL),
    ),
    min_size=1,
    max_size=4,
)


class Sched:
    def __init__(self, i: int, client: EtcdClient, prefix: bytes) -> None:
        self.name = f"s{i}"
        self.election = Election(client, prefix + b"leader", TTL)
        self.store = EtcdStore(client, (prefix + b"state").decode(), self.election)
        self.scope = trio.CancelScope()
        self.hold_scope = trio.CancelScope()
        self.resumed = trio.Event()
        self.resumed.set()

    def start(self, nursery: trio.Nursery) -> None:
        self.scope = trio.CancelScope()
        nursery.start_soon(self.run, self.scope)

    async def run(self, scope: trio.CancelScope) -> None:
        with scope:
            while True:
                await self.election.campaign({"scheduler_id": self.name})
                while True:
                    self.hold_scope = trio.CancelScope()
                    with self.hold_scope:
                        try:
                            await self.election.hold()
                        except LeadershipLost:
                            break
                    # Paused: no renewals until resumed; then hold() notices an expired lease.
                    await self.resumed.wait()

    def pause(self) -> None:
        self.resumed = trio.Event()
        self.hold_scope.cancel()


def run_schedule(endpoint: str, schedule: list[tuple[int, str, float]], case: int) -> None:
    async def main() -> None:
        prefix = f"/sched/{case}/".encode()
        async with EtcdClient([endpoint], timeout=1.0) as client:
            scheds = [Sched(i, client, prefix) for i in range(3)]
            overlaps: list[str] = []
            writes = {"ok": 0, "fenced": 0}
            async with trio.open_nursery() as nursery:
                for s in scheds:
                    s.start(nursery)

                async def monitor() -> None:
                    n = 0
                    while True:
                        leaders = [s for s in scheds if s.election.valid()]
                        if len(leaders) > 1:
                            now = trio.current_time()
                            overlaps.append(
                                ", ".join(
                                    f"{s.name} epoch {s.election.term.epoch} for "
                                    f"{s.election.term.valid_until - now:.3f} s"
                                    for s in leaders
                                    if s.election.term is not None
                                )
                            )
                        # Every scheduler that has a term tries a guarded write.
                        for s in scheds:
                            if s.election.term is None:
                                continue
                            n += 1
                            record = {"t": "fn", "name": "f", "version": n, "spec": {}}
                            record["nodes"] = [s.name]
                            try:
                                await s.store.commit([record])
                            except Deposed:
                                writes["fenced"] += 1
                                continue
                            except EtcdError:
                                continue
                            writes["ok"] += 1
                        await trio.sleep(0.02)

                nursery.start_soon(monitor)
                for i, action, wait in schedule:
                    s = scheds[i]
                    if action == "pause":
                        s.pause()
                        await trio.sleep(wait)
                        s.resumed.set()
                    elif action == "kill":
                        s.scope.cancel()  # no resign: the lease must expire
                        s.election.term = None
                        await trio.sleep(wait)
                    else:
                        if s.scope.cancel_called:
                            s.start(nursery)
                        await trio.sleep(wait)
                # Everyone back: someone leads again within 2 TTL (+ generous slack).
                for s in scheds:
                    s.resumed.set()
                    if s.scope.cancel_called:
                        s.start(nursery)
                # Someone leads again and writes (deadline generous for loaded machines).
                done = writes["ok"]
                with trio.fail_after(60):
                    while writes["ok"] <= done:
                        await trio.sleep(0.02)
                nursery.cancel_scope.cancel()
            assert overlaps == [], overlaps

    trio.run(main)


def test_never_two_leaders(etcd: PrivateEtcd) -> None:
    cases = iter(range(1000))

    @settings(
        max_examples=4,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(ACTIONS)
    def check(schedule: list[tuple[int, str, float]]) -> None:
        run_schedule(etcd.endpoint, schedule, next(cases))

    check()
