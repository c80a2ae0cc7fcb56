"""Where the central scheduler keeps its desired state: etcd (HA) or a local journal (dev).

Both stores take the same records (``fn``, ``rm``, ``quota``, ``cmd``, ``done``;
see :class:`~huselet.central.journal.DesiredState`) through one call,
:meth:`StateStore.commit`, which returns only once the records are durable and
only then applies them to ``state`` — memory never runs ahead of the store.
A command is committed before its frame can leave the process, so the next
leader knows every command a node may have seen.

**EtcdStore** — under ``<prefix>/``:

- ``fn/<name>``  → JSON ``{name, version, spec, nodes, quota?}``
- ``ver/<name>`` → the highest version ever used for the name (kept after a
  remove, so versions stay monotonic per function: PROTOCOL.md §C)
- ``cmd/<id>``   → JSON ``{id, node, kind, body, fn?}``: issued, no result yet;
  deleted when its result arrives. Loaded in ``mod_revision`` order = issue order.

Every commit is one transaction guarded by "the leader key still has my
create revision" (:meth:`Election.guard`): a deposed leader's writes fail with
:class:`Deposed`. A commit too large for one transaction (etcd allows 128
operations and 1.5 MiB per request by default) is split into several, in
order. Values stay far below etcd's 1.5 MiB limit (a spec is ≤ 64 KiB). Old
revisions are compacted by the leader every ``COMPACT_EVERY`` commits.

**JournalStore** — the single-host dev mode without etcd: the JSON-lines
journal of :mod:`huselet.central.journal`, written off the event loop, and an
exclusive lock on the state directory: a second scheduler on the same state
is refused, not made a standby.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from typing import Any, Protocol

import trio

from huselet.central.election import Election
from huselet.central.errors import Deposed, StoreUnavailable
from huselet.central.etcd import EtcdClient, Op
from huselet.central.journal import DesiredState, FunctionEntry, Journal, PendingCommand
from huselet.log import get_logger

log = get_logger("central.store")

MAX_TXN_OPS = 100  # etcd's default --max-txn-ops is 128
MAX_TXN_BYTES = 1 << 20  # etcd's default request limit is 1.5 MiB
COMPACT_EVERY = 5000
KEEP_REVISIONS = 1000


class StateStore(Protocol):
    @property
    def state(self) -> DesiredState: ...

    async def load(self) -> DesiredState: ...

    async def commit(self, records: Sequence[dict[str, Any]]) -> None: ...

    async def close(self) -> None: ...


# --- etcd ----------------------------------------------------------------------------------


def _dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), sort_keys=True).encode()


class EtcdStore:
    def __init__(self, client: EtcdClient, prefix: str, election: Election) -> None:
        self.client = client
        self.prefix = prefix.rstrip("/").encode() + b"/"
        self.election = election
        self.state = DesiredState()
        self._commits = 0

    def _key(self, kind: str, name: str) -> bytes:
        return self.prefix + kind.encode() + b"/" + name.encode()

    async def load(self) -> DesiredState:
        kvs, _ = await self.client.range(self.prefix, prefix=True)
        state = DesiredState()
        commands = []
        for kv in kvs:
            kind, _, name = kv.key[len(self.prefix) :].decode().partition("/")
            try:
                value = json.loads(kv.value)
                if kind == "fn":
                    state.functions[name] = FunctionEntry(
                        value["name"],
                        int(value["version"]),
                        value["spec"],
                        list(value["nodes"]),
                        value.get("quota"),
                    )
                elif kind == "ver":
                    state.versions[name] = max(state.versions.get(name, 0), int(value))
                elif kind == "cmd":
                    commands.append((kv.mod_revision, value))
            except (ValueError, KeyError, TypeError) as exc:
                log.error("unreadable key in etcd skipped", key=kv.key[:200], error=str(exc))
        for entry in state.functions.values():
            state.versions[entry.name] = max(state.versions.get(entry.name, 0), entry.version)
        for _, value in sorted(commands, key=lambda c: c[0]):
            state.pending[value["id"]] = PendingCommand(
                value["id"], value["node"], value["kind"], value["body"], value.get("fn")
            )
        self.state = state
        return state

    def _ops(self, records: Sequence[dict[str, Any]]) -> list[Op]:
        """The etcd operations for ``records``, computed on a scratch copy of the state."""
        scratch = DesiredState(
            functions={n: dataclasses.replace(e) for n, e in self.state.functions.items()},
            pending={},
            versions=dict(self.state.versions),
        )
        ops: dict[bytes, Op] = {}  # last write per key wins, in first-write order
        for record in records:
            scratch.apply(record)
            t = record["t"]
            if t in ("fn", "quota", "rm"):
                name = record["name"]
                entry = scratch.functions.get(name)
                fn_key = self._key("fn", name)
                if entry is None:
                    ops[fn_key] = Op.delete(fn_key)
                else:
                    ops[fn_key] = Op.put(fn_key, _dumps(_entry_json(entry)))
                if name in scratch.versions:
                    ver_key = self._key("ver", name)
                    ops[ver_key] = Op.put(ver_key, _dumps(scratch.versions[name]))
            elif t == "cmd":
                value = {k: record[k] for k in ("id", "node", "kind", "body")}
                if record.get("fn"):
                    value["fn"] = record["fn"]
                ops[self._key("cmd", record["id"])] = Op.put(
                    self._key("cmd", record["id"]), _dumps(value)
                )
            elif t == "done":
                ops[self._key("cmd", record["id"])] = Op.delete(self._key("cmd", record["id"]))
            else:
                raise ValueError(f"unknown record type {t!r}")
        return list(ops.values())

    async def commit(self, records: Sequence[dict[str, Any]]) -> None:
        if not records:
            return
        if not self.election.valid():
            raise Deposed("this scheduler no longer holds the leader lease")
        guard = self.election.guard()
        for chunk in _chunks(self._ops(records)):
            result = await self.client.txn([guard], chunk)
            if not result.succeeded:
                raise Deposed("etcd refused the write: another scheduler leads now")
            self._commits += 1
            if self._commits % COMPACT_EVERY == 0 and result.revision > KEEP_REVISIONS:
                await self.client.compact(result.revision - KEEP_REVISIONS)
        for record in records:
            self.state.apply(record)

    async def close(self) -> None:
        pass


def _entry_json(entry: FunctionEntry) -> dict[str, Any]:
    out: dict[str, Any] = {
        "name": entry.name,
        "version": entry.version,
        "spec": entry.spec,
        "nodes": entry.nodes,
    }
    if entry.quota:
        out["quota"] = entry.quota
    return out


def _chunks(ops: list[Op]) -> list[list[Op]]:
    chunks: list[list[Op]] = [[]]
    size = 0
    for op in ops:
        n = len(json.dumps(op.body))
        if chunks[-1] and (len(chunks[-1]) >= MAX_TXN_OPS or size + n > MAX_TXN_BYTES):
            chunks.append([])
            size = 0
        chunks[-1].append(op)
        size += n
    return chunks


# --- local journal (dev mode) -------------------------------------------------------------


class JournalStore:
    """The journal file, written in a worker thread so fsync never blocks node sessions."""

    def __init__(self, journal: Journal) -> None:
        self.journal = journal
        self._lock = trio.Lock()  # one writer at a time keeps the file's record order

    @property
    def state(self) -> DesiredState:
        return self.journal.state

    async def load(self) -> DesiredState:
        state = await trio.to_thread.run_sync(self.journal.load)
        await trio.to_thread.run_sync(self.journal.open)
        return state

    async def commit(self, records: Sequence[dict[str, Any]]) -> None:
        if not records:
            return
        async with self._lock:
            try:
                await trio.to_thread.run_sync(self.journal.append_many, list(records))
            except OSError as exc:
                raise StoreUnavailable(f"cannot write the journal: {exc}") from exc

    async def close(self) -> None:
        self.journal.close()
