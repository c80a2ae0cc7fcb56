"""The central scheduler's desired state, and its single-host dev-mode journal of JSON lines.

:class:`DesiredState` is what any store (etcd or this journal, see
:mod:`huselet.central.store`) holds — what a new leader must know to continue
without applying anything twice:

- the **desired functions** (``fn``/``rm`` records): spec, version, placement;
- every **command issued** (``cmd``) and every **result** (``done``). A new
  leader re-issues the commands without a result *with their original ids*
  (PROTOCOL.md §9); the nodes answer those they already executed from their
  result tables instead of running them again.

A record is journaled *before* its effect leaves the process (a command is
written before its frame is sent), so nothing the nodes saw is unknown to the
next leader. Records are written whole (short writes are continued) to an
``O_APPEND`` descriptor and fsync'd unless disabled, and only *then* applied
to the in-memory state; a failed write leaves the state as it was. A torn
last line (a crash mid-write) is ignored on load. The file is compacted when
a scheduler starts and whenever it grew past ``compact_after`` records (write
a temporary file, fsync, rename). :class:`~huselet.central.store.JournalStore`
calls it from a worker thread, never on the event loop.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cache.durable import fsync_dir
from huselet.log import get_logger

log = get_logger("central")


@dataclass
class FunctionEntry:
    name: str
    version: int
    spec: dict[str, Any]
    nodes: list[str]
    quota: dict[str, int] | None = None  # set_quota overrides of the spec's limits


@dataclass
class PendingCommand:
    cmd_id: str
    node: str
    kind: str
    body: Any
    function: str | None = None  # the function it acts on, if any


@dataclass
class DesiredState:
    """What the journal says: desired functions and commands still owed a result."""

    functions: dict[str, FunctionEntry] = field(default_factory=dict)
    pending: dict[str, PendingCommand] = field(default_factory=dict)  # in issue order
    versions: dict[str, int] = field(default_factory=dict)  # highest version ever used

    def apply(self, record: dict[str, Any]) -> None:
        t = record.get("t")
        if t == "fn":
            entry = FunctionEntry(
                record["name"], int(record["version"]), record["spec"], list(record["nodes"])
            )
            entry.quota = record.get("quota")
            self.functions[entry.name] = entry
            self.versions[entry.name] = max(self.versions.get(entry.name, 0), entry.version)
        elif t == "rm":
            self.functions.pop(record["name"], None)
            if "version" in record:
                self.versions[record["name"]] = int(record["version"])
        elif t == "cmd":
            self.pending[record["id"]] = PendingCommand(
                record["id"], record["node"], record["kind"], record["body"], record.get("fn")
            )
        elif t == "done":
            self.pending.pop(record["id"], None)
        elif t == "quota":
            if record["name"] in self.functions:
                self.functions[record["name"]].quota = dict(record["limits"])
        elif t == "ver":
            self.versions[record["name"]] = int(record["version"])
        else:
            raise ValueError(f"unknown journal record type {t!r}")

    def records(self) -> list[dict[str, Any]]:
        """This state as a minimal list of records (for compaction)."""
        out: list[dict[str, Any]] = [
            {"t": "ver", "name": name, "version": v} for name, v in self.versions.items()
        ]
        for e in self.functions.values():
            fn = {"t": "fn", "name": e.name, "version": e.version, "spec": e.spec, "nodes": e.nodes}
            out.append(fn | ({"quota": e.quota} if e.quota else {}))
        for c in self.pending.values():
            out.append(
                {"t": "cmd", "id": c.cmd_id, "node": c.node, "kind": c.kind, "body": c.body}
                | ({"fn": c.function} if c.function else {})
            )
        return out


class Journal:
    """Append-only JSON-lines file plus the :class:`DesiredState` it describes."""

    def __init__(self, path: Path, *, fsync: bool = True, compact_after: int = 20_000) -> None:
        self.path = path
        self.fsync = fsync
        self.compact_after = compact_after
        self.state = DesiredState()
        self.records = 0  # records in the file
        self.torn = 0  # unreadable lines skipped at load
        self._fd: int | None = None

    def load(self) -> DesiredState:
        """Read the file (if any) into a fresh state; call before :meth:`open`."""
        self.state = DesiredState()
        self.records = self.torn = 0
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return self.state
        for line in data.splitlines():
            if not line.strip():
                continue
            try:
                self.state.apply(json.loads(line))
                self.records += 1
            except (ValueError, KeyError, TypeError) as exc:
                # Only a crash mid-write makes a bad line, and only the last one.
                self.torn += 1
                log.warning("journal line skipped", path=str(self.path), error=str(exc))
        return self.state

    def open(self) -> None:
        """Compact what was loaded and start appending (the caller holds the leader lock)."""
        self._compact()

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def append(self, record: dict[str, Any]) -> None:
        """Make ``record`` durable, then apply it to the state."""
        self.append_many([record])

    def append_many(self, records: list[dict[str, Any]]) -> None:
        """Write ``records`` whole (fsync'd), then apply them; on OSError nothing is applied."""
        assert self._fd is not None, "journal not open"
        data = b"".join(
            json.dumps(r, separators=(",", ":"), sort_keys=True).encode() + b"\n" for r in records
        )
        view = memoryview(data)
        while view:
            written = os.write(self._fd, view)
            view = view[written:]
        if self.fsync:
            os.fsync(self._fd)
        for record in records:
            self.state.apply(record)
        self.records += len(records)
        if self.records > self.compact_after:
            self._compact()

    def _compact(self) -> None:
        records = self.state.records()
        tmp = self.path.with_suffix(".tmp")
        with open(tmp, "wb") as f:
            for record in records:
                f.write(json.dumps(record, separators=(",", ":"), sort_keys=True).encode())
                f.write(b"\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        fsync_dir(self.path.parent)
        self.close()
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
        self.records = len(records)
