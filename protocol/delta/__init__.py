"""Delta-event state protocol between a huselet node and the central scheduler.

Sans-IO, both ends: the node streams versioned resource deltas (batched,
coalesced, sequenced, acknowledged, resumable, with snapshot resync and a
digest for anti-entropy); the scheduler streams commands (sequenced, fenced by
epoch, re-delivered until answered, applied once via the node's result table).
PROTOCOL.md beside this package is the specification.

Modules, one job each:

- :mod:`~protocol.delta.messages` — tags, limits and the typed wire messages
- :mod:`~protocol.delta.decode` — field validation, frame → message
- :mod:`~protocol.delta.encode` — message → frame; items encoded once, frames assembled
- :mod:`~protocol.delta.replay` — bounded replay buffer of sent sequenced frames
- :mod:`~protocol.delta.resources` — versioned resource store, digest
- :mod:`~protocol.delta.batch` — node-side coalescing of changes into batches
- :mod:`~protocol.delta.results` — bounded command result table (exactly-once effect)
- :mod:`~protocol.delta.nodestate` — :class:`NodeState` (durable across reconnects), config
- :mod:`~protocol.delta.session` — what both machines share (IO plumbing, :class:`Phase`)
- :mod:`~protocol.delta.node` — :class:`NodeSession`, the node's machine
- :mod:`~protocol.delta.fleet` — :class:`FleetState`, the scheduler's per-node records
- :mod:`~protocol.delta.scheduler` — :class:`SchedulerSession`, one per connection
- :mod:`~protocol.delta.rotation` — scheduler address rotation with backoff
- :mod:`~protocol.delta.events` — events both machines emit
- :mod:`~protocol.delta.errors` — typed errors
"""

from protocol.delta.errors import (
    AckOutOfRange,
    CommandBacklogFull,
    DeltaError,
    DeltaProtocolError,
    DeltaUsageError,
    InvalidMessage,
    LimitExceeded,
    ResourceTooLarge,
    ResumeMismatch,
    SequenceGap,
    SnapshotMismatch,
    StaleEpoch,
    TooManyResources,
    UnexpectedMessage,
    UnknownCommand,
    UnsupportedFeature,
    UnsupportedVersion,
)
from protocol.delta.events import (
    Change,
    CloseConnection,
    CommandCompleted,
    CommandReceived,
    CommandRefused,
    Connected,
    DeltasApplied,
    DigestMismatch,
    LeaseExpired,
    LeaseGranted,
    NodeConnected,
    NodeEvent,
    SchedulerEvent,
    SnapshotApplied,
    SnapshotSent,
)
from protocol.delta.fleet import FleetState, NodeRecord, SchedulerConfig
from protocol.delta.messages import (
    COMMAND_KINDS,
    FEATURE_DIGEST,
    MAX_ITEM_BYTES,
    PROTO_VERSION,
    SUPPORTED_FEATURES,
)
from protocol.delta.node import NodeSession
from protocol.delta.nodestate import NodeConfig, NodeState
from protocol.delta.replay import ReplayBuffer
from protocol.delta.resources import ResourceStore, digest_of, entry_hash
from protocol.delta.results import CommandResultTable
from protocol.delta.rotation import SchedulerAddressRotation
from protocol.delta.scheduler import SchedulerSession
from protocol.delta.session import Phase

__all__ = [
    "COMMAND_KINDS",
    "FEATURE_DIGEST",
    "MAX_ITEM_BYTES",
    "PROTO_VERSION",
    "SUPPORTED_FEATURES",
    "AckOutOfRange",
    "Change",
    "CloseConnection",
    "CommandBacklogFull",
    "CommandCompleted",
    "CommandReceived",
    "CommandRefused",
    "CommandResultTable",
    "Connected",
    "DeltaError",
    "DeltaProtocolError",
    "DeltaUsageError",
    "DeltasApplied",
    "DigestMismatch",
    "FleetState",
    "InvalidMessage",
    "LeaseExpired",
    "LeaseGranted",
    "LimitExceeded",
    "NodeConfig",
    "NodeConnected",
    "NodeEvent",
    "NodeRecord",
    "NodeSession",
    "NodeState",
    "Phase",
    "ReplayBuffer",
    "ResourceStore",
    "ResourceTooLarge",
    "ResumeMismatch",
    "SchedulerAddressRotation",
    "SchedulerConfig",
    "SchedulerEvent",
    "SchedulerSession",
    "SequenceGap",
    "SnapshotApplied",
    "SnapshotMismatch",
    "SnapshotSent",
    "StaleEpoch",
    "TooManyResources",
    "UnexpectedMessage",
    "UnknownCommand",
    "UnsupportedFeature",
    "UnsupportedVersion",
    "digest_of",
    "entry_hash",
]
