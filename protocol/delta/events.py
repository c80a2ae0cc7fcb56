"""Events the delta-protocol machines hand to their IO layer (via ``next_event``).

Node side: :class:`Connected`, :class:`CommandReceived`, :class:`LeaseGranted`,
:class:`LeaseExpired`, :class:`SnapshotSent`, :class:`CommandRefused`,
:class:`CloseConnection`.

Scheduler side: :class:`NodeConnected`, :class:`DeltasApplied`,
:class:`SnapshotApplied`, :class:`CommandCompleted`, :class:`DigestMismatch`,
:class:`CloseConnection`.

:class:`CloseConnection` means "close this link now" (a timeout, the peer's
``bye``, or a newer connection of the same node took over); it is not an error
of the peer, which is what a raised :class:`~protocol.delta.errors.DeltaProtocolError` means.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple


@dataclass(frozen=True, slots=True)
class CloseConnection:
    reason: str
    code: str = "closed"
    leader: str | None = None  # bye not_leader: where the leader is (a hint)


# --- node side ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Connected:
    """The handshake completed; sequenced traffic flows."""

    scheduler_id: str
    epoch: int
    mode: str  # how the node's stream continues: "resume" | "snapshot"
    cmd_mode: str  # how the command stream continues: "resume" | "reset"


@dataclass(frozen=True, slots=True)
class CommandReceived:
    """A new command to execute; answer with ``NodeSession.complete_command``."""

    cmd_id: str
    kind: str
    body: Any
    epoch: int


@dataclass(frozen=True, slots=True)
class CommandRefused:
    """A command was answered without reaching the daemon (fenced or unknown kind)."""

    cmd_id: str
    status: str
    reason: str


@dataclass(frozen=True, slots=True)
class LeaseGranted:
    """The scheduler's lease is held again: new placements may be accepted."""

    epoch: int
    expires_at: float


@dataclass(frozen=True, slots=True)
class LeaseExpired:
    """No valid scheduler frame within ``lease_ttl``: stop taking new placements,
    keep serving what is already placed (static stability)."""

    expired_at: float


@dataclass(frozen=True, slots=True)
class SnapshotSent:
    """The node put a full snapshot on its stream (why: ``welcome`` or ``resync: …``)."""

    reason: str
    count: int
    first_seq: int


# --- scheduler side ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OfNode:
    """Base of the scheduler-side events: each one is about the node ``node_id``."""

    node_id: str


@dataclass(frozen=True, slots=True)
class NodeConnected(OfNode):
    boot_id: str
    mode: str
    cmd_mode: str


class Change(NamedTuple):
    """One applied delta (ignored stale ones are not reported)."""

    kind: str
    name: str
    version: int
    body: Any  # None for a removal
    removed: bool


@dataclass(frozen=True, slots=True)
class DeltasApplied(OfNode):
    seq: int
    changes: list[Change]


@dataclass(frozen=True, slots=True)
class SnapshotApplied(OfNode):
    """The node's view was replaced atomically by a complete snapshot."""

    count: int
    rev: int


@dataclass(frozen=True, slots=True)
class CommandCompleted(OfNode):
    cmd_id: str
    status: str  # ok | error | refused | unsupported
    result: Any


@dataclass(frozen=True, slots=True)
class DigestMismatch(OfNode):
    """Anti-entropy found the view differs from the node; a resync was requested."""

    seq: int


NodeEvent = (
    Connected
    | CommandReceived
    | CommandRefused
    | LeaseGranted
    | LeaseExpired
    | SnapshotSent
    | CloseConnection
)
SchedulerEvent = (
    NodeConnected
    | DeltasApplied
    | SnapshotApplied
    | CommandCompleted
    | DigestMismatch
    | CloseConnection
)
