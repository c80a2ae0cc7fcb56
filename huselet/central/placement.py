"""Placement and reconciliation: pure functions from desired and reported state to commands.

**Placement** (a new function): a node is eligible when it is connected, its
``node/self`` says ``placements: open`` and its free memory — the memory it
offers (``capacity/node``) minus what the functions already placed on it
reserve — covers the function's reservation (``memory_mb * max(1,
min_instances)``). The most free nodes win; by default every eligible node
gets the function. Simple on purpose: this scheduler exists to exercise the
protocol, not to compete with real bin packing.

**Reconciliation** (per node, whenever its view changed and periodically):
a function placed on the node whose reported version is older gets a
deploy/update command; a function the scheduler deployed that is no longer
placed there gets a remove command; a function whose reported limits differ
from a quota set by the operator gets a ``set_quota``. At most one command per (node, function)
is outstanding, and a version that failed is not retried for a while — so a
node that keeps refusing is not flooded.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from huselet.central.errors import PlacementError
from huselet.central.journal import FunctionEntry

DEFAULT_MEMORY_MB = 256
RETRY_FAILED_S = 30.0


@dataclass(frozen=True)
class NodeInfo:
    node_id: str
    connected: bool
    placements: str  # "open" | "drained" | "lease_expired" | "unknown"
    memory_mb: int


@dataclass(frozen=True)
class Reported:
    """A function as a node reports it (``function/<name>``)."""

    version: int
    source: str  # "scheduler" | "config"
    max_instances: Any = None
    min_instances: Any = None


def reservation_mb(spec: Mapping[str, Any]) -> int:
    memory = spec.get("memory_mb", DEFAULT_MEMORY_MB)
    minimum = spec.get("min_instances", 0)
    memory = memory if isinstance(memory, int) and memory > 0 else DEFAULT_MEMORY_MB
    minimum = minimum if isinstance(minimum, int) and minimum > 0 else 1
    return memory * minimum


def reserved_by_node(functions: Iterable[FunctionEntry]) -> dict[str, int]:
    reserved: dict[str, int] = {}
    for entry in functions:
        need = reservation_mb(entry.spec)
        for node in entry.nodes:
            reserved[node] = reserved.get(node, 0) + need
    return reserved


def choose_nodes(
    nodes: Iterable[NodeInfo],
    spec: Mapping[str, Any],
    reserved: Mapping[str, int],
    *,
    replicas: int | None = None,
) -> list[str]:
    """Node ids for a new function, most free memory first (ties by id)."""
    need = reservation_mb(spec)
    free = {
        n.node_id: n.memory_mb - reserved.get(n.node_id, 0)
        for n in nodes
        if n.connected and n.placements == "open"
    }
    eligible = sorted((nid for nid, mb in free.items() if mb >= need), key=lambda n: (-free[n], n))
    if not eligible:
        raise PlacementError(f"no connected node with placements open has {need} MB free")
    if replicas is None:
        return eligible
    if replicas > len(eligible):
        raise PlacementError(f"{replicas} replicas wanted, {len(eligible)} nodes can take one")
    return eligible[:replicas]


@dataclass(frozen=True)
class Action:
    kind: str  # a protocol command kind
    body: dict[str, Any]
    function: str


def reconcile(
    node_id: str,
    reported: Mapping[str, Reported],
    desired: Mapping[str, FunctionEntry],
    outstanding: Iterable[str],
    failed: Mapping[str, tuple[int, float]],
    now: float,
) -> list[Action]:
    """Commands that move ``node_id`` towards the desired state.

    ``outstanding``: functions with a command to this node still owed a result;
    ``failed``: function → (version, when) of the last failed deploy here.
    """
    busy = set(outstanding)
    actions = []
    for name, entry in desired.items():
        if node_id not in entry.nodes or name in busy:
            continue
        have = reported.get(name)
        if have is not None and have.source != "scheduler":
            continue  # configured on the node itself: not ours to replace
        if have is not None and have.version >= entry.version:
            quota = entry.quota or {}
            if any(getattr(have, key) != value for key, value in quota.items()):
                actions.append(Action("set_quota", {"name": name, **quota}, name))
            continue
        last = failed.get(name)
        if last is not None and last[0] == entry.version and now < last[1] + RETRY_FAILED_S:
            continue
        kind = "deploy_function" if have is None else "update_function"
        actions.append(Action(kind, {"version": entry.version, "spec": entry.spec}, name))
    for name, have in reported.items():
        if have.source != "scheduler" or name in busy:
            continue
        wanted = desired.get(name)
        if wanted is None or node_id not in wanted.nodes:
            actions.append(Action("remove_function", {"name": name}, name))
    return actions
