"""Vocabulary of the delta-event protocol: tags, feature bits, limits, message types.

Every frame is one :mod:`protocol.frames` frame (4-byte big-endian length +
msgpack map) whose ``t`` key names its type. PROTOCOL.md is the normative
description; this module and its two companions are its executable form:
:mod:`protocol.delta.decode` validates a received frame into one of the
message classes here (raising :class:`InvalidMessage`), and
:mod:`protocol.delta.encode` puts messages and pre-encoded items on the wire.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Final

PROTO_VERSION: Final = 1

# Feature bits. `features` says what a peer implements; `requires` says what the
# peer must implement for the sender to go on (unknown required bits → refuse).
FEATURE_DIGEST: Final = 1 << 0  # digest/count on batch, snapshot-end and heartbeat frames
SUPPORTED_FEATURES: Final = FEATURE_DIGEST


class Tag(StrEnum):
    """A frame's ``t``: which message it is. A str, so it goes on the wire as-is."""

    HELLO = "hello"
    WELCOME = "welcome"
    BATCH = "batch"
    SNAP = "snap"
    CMD = "cmd"
    HB = "hb"
    RESYNC = "resync"
    BYE = "bye"


MODE_RESUME: Final = "resume"
MODE_SNAPSHOT: Final = "snapshot"
CMD_RESUME: Final = "resume"
CMD_RESET: Final = "reset"

COMMAND_KINDS: Final = frozenset(
    {
        "deploy_function",
        "update_function",
        "remove_function",
        "prefetch_images",
        "set_quota",
        "drain",
        "undrain",
    }
)

STATUS_OK: Final = "ok"
STATUS_ERROR: Final = "error"
STATUS_REFUSED: Final = "refused"  # fenced: command epoch below the highest seen
STATUS_UNSUPPORTED: Final = "unsupported"  # command kind unknown to this node
RESULT_STATUSES: Final = frozenset({STATUS_OK, STATUS_ERROR, STATUS_REFUSED, STATUS_UNSUPPORTED})

# Limits (bytes are UTF-8 lengths for strings; counts for lists).
MAX_ID_LEN: Final = 128  # node_id, boot_id, scheduler_id, cmd_id, cmd_stream
MAX_KIND_LEN: Final = 64
MAX_NAME_LEN: Final = 1024
MAX_ITEM_BYTES: Final = 128 * 1024  # one encoded delta item, result item or command body
MAX_REASON_LEN: Final = 1024
MIN_MAX_FRAME: Final = 1 << 20  # no peer may announce a smaller frame limit
DEFAULT_MAX_FRAME: Final = 4 << 20
FRAME_OVERHEAD: Final = 1024  # room for a frame's header fields beyond its items
MAX_SEQ: Final = (1 << 63) - 1
DIGEST_SIZE: Final = 16


# --- decoded messages ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Hello:
    """node → scheduler, first frame of every connection."""

    proto: int
    node_id: str
    boot_id: str
    features: int
    requires: int
    next_seq: int  # seq the node's next node→scheduler frame will carry
    oldest_seq: int  # oldest seq still in the node's replay buffer (== next_seq if empty)
    cmd_stream: str  # scheduler→node stream the node last followed ("" = none)
    cmd_acked: int  # highest contiguous seq of cmd_stream the node applied
    epoch: int  # highest scheduler epoch the node has seen
    max_inflight: int  # node's command window
    max_frame: int
    state: tuple[bytes, int] | None  # (digest, count) of the node's reported state


@dataclass(frozen=True, slots=True)
class Welcome:
    """scheduler → node, answer to HELLO; the connection is established after it."""

    proto: int
    scheduler_id: str
    epoch: int
    features: int
    requires: int
    heartbeat_interval: float
    lease_ttl: float
    mode: str  # MODE_RESUME | MODE_SNAPSHOT (node→scheduler stream)
    resume_from: int
    cmd_stream: str
    cmd_mode: str  # CMD_RESUME | CMD_RESET (scheduler→node stream)
    cmd_from: int
    max_frame: int


@dataclass(frozen=True, slots=True)
class Batch:
    """node → scheduler, sequenced: deltas and command results."""

    seq: int
    ack: int
    deltas: list[Any]  # raw items; validated by check_delta while applying
    results: list[Any]  # raw items; validated by check_result
    state: tuple[bytes, int] | None


@dataclass(frozen=True, slots=True)
class Snap:
    """node → scheduler, sequenced: one part of a full snapshot."""

    seq: int
    ack: int
    rev: int
    part: int
    last: bool
    items: list[Any]
    count: int | None  # on the last part
    state: tuple[bytes, int] | None  # on the last part, with feature DIGEST


@dataclass(frozen=True, slots=True)
class Command:
    """scheduler → node, sequenced."""

    seq: int
    ack: int
    epoch: int
    cmd_id: str
    kind: str
    body: Any


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """Both ways, unsequenced: progress marks (last seq sent, ack) and liveness."""

    seq: int
    ack: int
    state: tuple[bytes, int] | None


@dataclass(frozen=True, slots=True)
class Resync:
    """scheduler → node, unsequenced: RESYNC_REQUIRED, send a full snapshot now."""

    reason: str


@dataclass(frozen=True, slots=True)
class Bye:
    """Both ways: the sender is closing the connection and says why."""

    code: str
    message: str
    leader: str | None = None  # not_leader: the address of the scheduler that leads


Message = Hello | Welcome | Batch | Snap | Command | Heartbeat | Resync | Bye
