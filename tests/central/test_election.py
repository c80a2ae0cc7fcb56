"""Leadership and fenced desired state on a real etcd member."""

from __future__ import annotations

import pytest
import trio
from support import eventually

from huselet.central.election import Election
from huselet.central.embedded import PrivateEtcd
from huselet.central.errors import Deposed, LeadershipLost
from huselet.central.etcd import EtcdClient
from huselet.central.store import EtcdStore

KEY = b"/e/leader"


def fn_record(name: str, version: int = 1) -> dict[str, object]:
    return {"t": "fn", "name": name, "version": version, "spec": {"name": name}, "nodes": ["n1"]}


async def test_one_leader_epochs_grow_and_a_deposed_leader_cannot_write(
    etcd: PrivateEtcd,
) -> None:
    async with EtcdClient([etcd.endpoint]) as ca, EtcdClient([etcd.endpoint]) as cb:
        a, b = Election(ca, KEY, 2), Election(cb, KEY, 2)
        store_a = EtcdStore(ca, "/e/state", a)
        store_b = EtcdStore(cb, "/e/state", b)
        term_a = await a.campaign({"scheduler_id": "a"})
        await store_a.commit([fn_record("f")])
        won = trio.Event()

        async def campaign_b() -> None:
            await b.campaign({"scheduler_id": "b"})
            won.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(campaign_b)
            # b must stay a standby while a holds the lease: once b has read
            # that a leads (a condition, not a fixed wait), it has not won.
            await eventually(lambda: b.leader == {"scheduler_id": "a"})
            assert not won.is_set()
            # a "pauses": it stops renewing; etcd lets the lease expire and b wins.
            with trio.fail_after(30):
                await won.wait()
        assert b.term is not None and b.term.epoch > term_a.epoch
        # a has not noticed yet (pretend its clock says the lease still holds):
        # its guarded write is refused by etcd, not just by its own clock.
        assert a.term is not None
        a.term.valid_until = trio.current_time() + 60
        with pytest.raises(Deposed):
            await store_a.commit([fn_record("g")])
        assert "g" not in store_a.state.functions  # memory did not run ahead
        state = await store_b.load()
        assert set(state.functions) == {"f"} and state.versions == {"f": 1}
        await store_b.commit([fn_record("f", 2), {"t": "rm", "name": "f", "version": 2}])
        again = await EtcdStore(cb, "/e/state", b).load()
        assert again.functions == {} and again.versions == {"f": 2}  # versions stay monotonic


async def test_the_leader_steps_down_when_etcd_is_unreachable(etcd: PrivateEtcd) -> None:
    async with EtcdClient([etcd.endpoint], timeout=0.5) as client:
        election = Election(client, KEY, 2)
        await election.campaign({"scheduler_id": "a"})
        assert election.valid()
        etcd.pause()
        try:
            with trio.fail_after(30), pytest.raises(LeadershipLost):
                await election.hold()
            assert not election.valid()
        finally:
            etcd.resume()


async def test_pending_commands_reload_in_issue_order(etcd: PrivateEtcd) -> None:
    async with EtcdClient([etcd.endpoint]) as client:
        election = Election(client, KEY, 2)
        await election.campaign({"scheduler_id": "a"})
        store = EtcdStore(client, "/e/state", election)
        ids = [f"a:9:{i}" for i in (3, 1, 20, 2)]  # key order differs from issue order
        for cmd_id in ids:
            await store.commit(
                [{"t": "cmd", "id": cmd_id, "node": "n1", "kind": "drain"} | {"body": {}}]
            )
        await store.commit([{"t": "done", "id": ids[1], "status": "ok"}])
        state = await EtcdStore(client, "/e/state", election).load()
        assert list(state.pending) == [ids[0], ids[2], ids[3]]
        # A commit larger than one etcd transaction allows is split, in order.
        many = [fn_record(f"f{i}") for i in range(250)]
        await store.commit(many)
        assert len((await EtcdStore(client, "/e/state", election).load()).functions) == 250
