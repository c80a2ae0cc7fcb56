"""Leadership of the central scheduler on etcd: a lease-bound key, its create revision as epoch.

Campaign: grant a lease of ``ttl`` seconds, then one transaction "if the
leader key does not exist, put it bound to my lease". Whoever's put succeeds
leads; its **epoch** (the fencing token of PROTOCOL.md §9) is the key's
create revision, which etcd assigns and which only grows, so every leader
incarnation has a strictly higher epoch than any before it.

Holding: the leader renews the lease every ``ttl / 3`` from the event loop and
counts its leadership valid until ``t_sent + ttl``, where ``t_sent`` is when
the last *successful* renewal was sent (etcd starts the new TTL no earlier
than it received the request, so the leader's idea of the end is never later
than etcd's). When the end arrives without a renewal — etcd unreachable, a
partition, the process paused by SIGSTOP or a long GC — :meth:`Election.hold`
returns at once and the caller steps down: it stops issuing commands and
closes node sessions. A paused process that resumes notices on its first
tick, because trio's clock is monotonic and runs on while the process is
stopped.

Every write of desired state is guarded by :meth:`Election.guard` ("the
leader key still has my create revision"), so a deposed leader that has not
noticed yet cannot change anything in etcd.

Standbys read the key (who leads, where) and watch it; a delete (the lease
expired or was revoked by a leader that stepped down) makes them campaign at
once. A poll every ``ttl`` backs the watch up.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import trio

from huselet.central.errors import LeadershipLost
from huselet.central.etcd import (
    Compare,
    CompareResult,
    EtcdClient,
    EtcdCompacted,
    EtcdError,
    EventType,
    LeaseNotFound,
    Op,
    Target,
)
from huselet.log import get_logger

log = get_logger("central.election")

RETRY_S = 0.2  # after an etcd error while campaigning


@dataclass
class Term:
    """One leadership term: the lease, the epoch and until when it surely holds."""

    lease: int
    epoch: int
    valid_until: float  # trio clock


class Election:
    def __init__(self, client: EtcdClient, key: bytes, ttl: int) -> None:
        if ttl < 2:
            raise ValueError("the leader lease TTL must be at least 2 s (etcd's minimum)")
        self.client = client
        self.key = key
        self.ttl = ttl
        self.term: Term | None = None
        self.leader: dict[str, Any] | None = None  # the current leader's announcement

    def valid(self) -> bool:
        """True while this process surely leads (its lease cannot have expired yet)."""
        return self.term is not None and trio.current_time() < self.term.valid_until

    def guard(self) -> Compare:
        """The condition every write of the leader carries."""
        assert self.term is not None, "not leading"
        return Compare(self.key, Target.CREATE, CompareResult.EQUAL, self.term.epoch)

    # --- standby ---------------------------------------------------------------------

    async def campaign(self, announcement: dict[str, Any]) -> Term:
        """Wait until this process leads; returns the term (its epoch)."""
        value = json.dumps(announcement, sort_keys=True).encode()
        while True:
            try:
                term = await self._try(value)
                if term is not None:
                    self.term = term
                    self.leader = announcement
                    return term
                await self._wait_for_vacancy()
            except EtcdError as exc:
                log.warning("campaign: etcd error", error=str(exc))
                await trio.sleep(RETRY_S)

    async def _try(self, value: bytes) -> Term | None:
        current = await self.client.get(self.key)
        if current is not None:
            self._note_leader(current.value)
            return None
        started = trio.current_time()
        lease, ttl = await self.client.lease_grant(self.ttl)
        try:
            result = await self.client.txn(
                [Compare(self.key, Target.CREATE, CompareResult.EQUAL, 0)],
                [Op.put(self.key, value, lease=lease)],
                [Op.get(self.key)],
            )
        except BaseException:
            with trio.CancelScope(shield=True), trio.move_on_after(self.client.timeout):
                await self.client.lease_revoke(lease)
            raise
        if result.succeeded:
            # The put is the transaction's only write: its revision is the key's create revision.
            return Term(lease=lease, epoch=result.revision, valid_until=started + ttl)
        await self.client.lease_revoke(lease)
        ranges = result.ranges()
        if ranges and ranges[0]:
            self._note_leader(ranges[0][0].value)
        return None

    def _note_leader(self, raw: bytes) -> None:
        try:
            info = json.loads(raw)
        except ValueError:
            info = None
        self.leader = info if isinstance(info, dict) else None

    async def _wait_for_vacancy(self) -> None:
        """Return once the key is gone (watch, backed by a poll every TTL)."""
        kvs, revision = await self.client.range(self.key)
        if not kvs:
            return
        self._note_leader(kvs[0].value)
        with trio.move_on_after(self.ttl):
            try:
                async for events in self.client.watch(self.key, start_revision=revision + 1):
                    for event in events:
                        if event.type is EventType.DELETE:
                            self.leader = None  # no stale hint for nodes meanwhile
                            return
                        self._note_leader(event.kv.value)
            except EtcdCompacted:
                return  # re-read from scratch

    async def current_leader(self) -> dict[str, Any] | None:
        kv = await self.client.get(self.key)
        if kv is None:
            self.leader = None
        else:
            self._note_leader(kv.value)
        return self.leader

    # --- leader ----------------------------------------------------------------------

    async def hold(self) -> None:
        """Keep the lease alive; raise :class:`LeadershipLost` when it is not renewed in time."""
        term = self.term
        if term is None:
            # Resigned (or lost) while the caller was not holding: campaign again.
            raise LeadershipLost("not leading")
        interval = self.ttl / 3
        while True:
            next_renewal = trio.current_time() + interval
            while trio.current_time() < next_renewal:
                if trio.current_time() >= term.valid_until:
                    raise self._lost("the lease ran out before it was renewed")
                await trio.sleep_until(min(next_renewal, term.valid_until))
            if trio.current_time() >= term.valid_until:
                raise self._lost("the lease ran out before it was renewed")
            sent = trio.current_time()
            try:
                with trio.move_on_at(term.valid_until) as scope:
                    ttl = await self.client.lease_keepalive(term.lease)
            except LeaseNotFound:
                raise self._lost("etcd says the lease is gone") from None
            except EtcdError as exc:
                log.warning("lease renewal failed; retrying", error=str(exc))
                interval = min(interval, 0.25)
                continue
            if scope.cancelled_caught:
                raise self._lost("the lease ran out while renewing it")
            term.valid_until = sent + ttl
            interval = self.ttl / 3

    def _lost(self, why: str) -> LeadershipLost:
        epoch = self.term.epoch if self.term is not None else 0
        log.warning("leadership lost", epoch=epoch, reason=why)
        self.term = None
        return LeadershipLost(why)

    async def resign(self) -> None:
        """Give leadership up now (revoke the lease: the key goes, standbys campaign)."""
        term, self.term = self.term, None
        if term is None:
            return
        with trio.CancelScope(shield=True), trio.move_on_after(self.client.timeout):
            try:
                await self.client.lease_revoke(term.lease)
            except EtcdError as exc:
                log.warning("could not revoke the leader lease", error=str(exc))
