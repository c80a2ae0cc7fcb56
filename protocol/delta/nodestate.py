"""Node-side durable state of the delta protocol, and the node's configuration.

:class:`NodeState` is everything that must survive a reconnect (but not a
reboot: a new ``boot_id`` starts from an empty state): the reported resources
as already put on the stream, the changes not yet framed, the node stream's
replay buffer, how far the command stream was applied, the highest scheduler
epoch seen (fencing), the command result table and the lease. A new
:class:`~protocol.delta.node.NodeSession` built on an existing ``NodeState``
continues exactly where the previous object stopped.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgpack

from protocol.delta.batch import DeltaBatcher
from protocol.delta.decode import check_name
from protocol.delta.encode import encode_item
from protocol.delta.errors import DeltaUsageError, InvalidMessage, TooManyResources
from protocol.delta.messages import (
    DEFAULT_MAX_FRAME,
    FRAME_OVERHEAD,
    MAX_ID_LEN,
    MAX_ITEM_BYTES,
    MIN_MAX_FRAME,
    SUPPORTED_FEATURES,
)
from protocol.delta.replay import ReplayBuffer
from protocol.delta.resources import ResourceStore
from protocol.delta.results import CommandResultTable


@dataclass(frozen=True, slots=True)
class NodeConfig:
    node_id: str
    boot_id: str  # new per daemon start: a new boot means a new, empty stream
    max_frame: int = DEFAULT_MAX_FRAME  # largest frame we accept
    max_batch_items: int = 1024  # flush at once when this many changes are pending
    max_batch_bytes: int = 256 * 1024  # ... or this many encoded bytes
    max_batch_delay: float = 0.05  # ... or when the oldest change waited this long
    replay_max_frames: int = 1024
    replay_max_bytes: int = 8 << 20
    max_resources: int = 100_000
    max_results: int = 4096  # command result table (running + finished)
    max_inflight: int = 64  # command window announced to the scheduler
    handshake_timeout: float = 10.0
    ack_every: int = 16  # ack at once after this many unacknowledged commands
    silent_heartbeats: float = 3.0  # link is dead after this many missed heartbeats
    features: int = SUPPORTED_FEATURES
    requires: int = 0

    def __post_init__(self) -> None:
        for value in (self.node_id, self.boot_id):
            if not 0 < len(value) <= MAX_ID_LEN:
                raise ValueError(f"node_id and boot_id must be 1..{MAX_ID_LEN} characters")
        if self.max_frame < MIN_MAX_FRAME:
            raise ValueError(f"max_frame must be at least {MIN_MAX_FRAME}")
        if not MAX_ITEM_BYTES <= self.max_batch_bytes <= self.max_frame - FRAME_OVERHEAD:
            raise ValueError("max_batch_bytes must lie in [MAX_ITEM_BYTES, max_frame - overhead]")
        if self.max_inflight > self.max_results:
            raise ValueError("max_inflight must not exceed max_results")
        if min(self.max_batch_items, self.max_resources, self.ack_every) < 1:
            raise ValueError("counts must be positive")
        if self.max_batch_delay < 0 or self.handshake_timeout <= 0 or self.silent_heartbeats < 1:
            raise ValueError("invalid timing configuration")


class NodeState:
    """What survives reconnects within one boot: streams, reported state, results, lease."""

    def __init__(self, config: NodeConfig) -> None:
        self.config = config
        self.revision = 0  # last version handed out; versions are node-wide and monotonic
        self.store: ResourceStore[bytes] = ResourceStore()  # state as sent on the stream
        self.batch = DeltaBatcher()  # changes not yet on the stream
        self.count = 0  # resources in store + batch (bounded by max_resources)
        self.replay = ReplayBuffer(
            max_frames=config.replay_max_frames, max_bytes=config.replay_max_bytes
        )
        self.cmd_stream = ""  # scheduler→node stream we follow, and how far
        self.cmd_applied = 0
        self.highest_epoch = 0  # fencing
        self.results = CommandResultTable(config.max_results)
        self.lease_held = False
        self.lease_deadline = 0.0
        self.packer = msgpack.Packer(use_bin_type=True, autoreset=True)

    def present(self, key: tuple[str, str]) -> bool:
        pending = self.batch.deltas.get(key)
        return pending[2] if pending is not None else key in self.store

    def put_upsert(self, kind: str, name: str, body: Any, now: float) -> int:
        """Record a change in the batcher under the next version; returns that version."""
        try:
            check_name(kind, name)
        except InvalidMessage as exc:
            raise DeltaUsageError(str(exc)) from None
        key = (kind, name)
        present = self.present(key)
        if not present and self.count >= self.config.max_resources:
            raise TooManyResources(f"node already reports {self.count} resources")
        version = self.revision + 1
        item = encode_item(self.packer, [kind, name, version, body], f"resource {kind}/{name}")
        self.revision = version
        self.batch.put(key, version, item, True, now)
        if not present:
            self.count += 1
        return version

    def put_removal(self, kind: str, name: str, now: float) -> int | None:
        """Record a removal under the next version; None (no-op) if ``kind/name`` is absent."""
        key = (kind, name)
        if not self.present(key):
            return None
        version = self.revision = self.revision + 1
        self.batch.put(key, version, self.packer.pack([kind, name, version]), False, now)
        self.count -= 1
        return version

    def resources(self) -> dict[tuple[str, str], tuple[int, Any]]:
        """Reported state including unsent changes: ``{(kind, name): (version, body)}``."""
        out = {
            (k, n): (v, msgpack.unpackb(item, raw=False)[3])
            for k, n, v, item in self.store.entries()
        }
        for key, (version, item, upsert) in self.batch.deltas.items():
            if upsert:
                out[key] = (version, msgpack.unpackb(item, raw=False)[3])
            else:
                out.pop(key, None)
        return out
