"""How a central scheduler process becomes leader and where its state lives.

- :class:`EtcdBackend` — HA across machines: leadership from an etcd lease
  (:mod:`huselet.central.election`), desired state in etcd
  (:class:`~huselet.central.store.EtcdStore`). Any number of schedulers; one
  leads, the others are standbys that take over within the lease TTL.
- :class:`LocalBackend` — single-host dev mode without etcd: a local journal
  and an exclusive ``flock`` on the state directory. A second scheduler on the
  same state directory is **refused** (it exits with an error): there is no
  shared-directory standby, because ``flock`` over a shared file system can
  hand out two leases at once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import trio

from huselet.central.election import Election
from huselet.central.errors import LeadershipLost, StateInUse
from huselet.central.etcd import EtcdClient
from huselet.central.journal import Journal
from huselet.central.leader import LeaderLock
from huselet.central.store import EtcdStore, JournalStore, StateStore

__all__ = ["Backend", "EtcdBackend", "LeadershipLost", "LocalBackend", "StateInUse"]


class Backend(Protocol):
    store: StateStore

    async def campaign(self, announcement: dict[str, Any]) -> int:
        """Wait until this process leads; returns its epoch (fencing token)."""
        ...

    async def hold(self) -> None:
        """Keep leading; raises :class:`LeadershipLost` when leadership cannot be kept."""
        ...

    def valid(self) -> bool:
        """True while this process surely leads."""
        ...

    def leader_info(self) -> dict[str, Any] | None:
        """Who leads (as last seen): ``scheduler_id``, ``listen`` (for nodes), ``admin``."""
        ...

    async def step_down(self) -> None: ...

    async def close(self) -> None: ...


class EtcdBackend:
    def __init__(self, client: EtcdClient, prefix: str, ttl: int) -> None:
        self.client = client
        prefix = "/" + prefix.strip("/")
        self.election = Election(client, (prefix + "/leader").encode(), ttl)
        self.store: StateStore = EtcdStore(client, prefix + "/state", self.election)

    async def campaign(self, announcement: dict[str, Any]) -> int:
        term = await self.election.campaign(announcement)
        return term.epoch

    async def hold(self) -> None:
        await self.election.hold()

    def valid(self) -> bool:
        return self.election.valid()

    def leader_info(self) -> dict[str, Any] | None:
        return self.election.leader

    async def refresh_leader(self) -> None:
        await self.election.current_leader()

    async def step_down(self) -> None:
        await self.election.resign()

    async def close(self) -> None:
        await self.election.resign()
        await self.client.aclose()


class LocalBackend:
    def __init__(self, state_dir: Path, *, fsync: bool = True) -> None:
        self.lock = LeaderLock(state_dir)
        self.store: StateStore = JournalStore(Journal(state_dir / "journal.jsonl", fsync=fsync))
        self._leading = False

    async def campaign(self, announcement: dict[str, Any]) -> int:
        if not self.lock.try_acquire():
            info = self.lock.leader_info() or {}
            raise StateInUse(
                f"another scheduler ({info.get('scheduler_id', '?')}) runs on "
                f"{self.lock.state_dir}; without --etcd there is no standby"
            )
        epoch = await trio.to_thread.run_sync(self.lock.next_epoch)
        await trio.to_thread.run_sync(self.lock.announce, announcement | {"epoch": epoch})
        self._leading = True
        return epoch

    async def hold(self) -> None:
        await trio.sleep_forever()

    def valid(self) -> bool:
        return self._leading

    def leader_info(self) -> dict[str, Any] | None:
        return self.lock.leader_info()

    async def step_down(self) -> None:
        self._leading = False

    async def close(self) -> None:
        self._leading = False
        await self.store.close()
        self.lock.release()
