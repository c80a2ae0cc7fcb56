"""The operator's API of the reference central scheduler (transport-free).

:mod:`huselet.central.admin` maps HTTP routes onto these methods; each returns
a JSON-able value or raises :class:`ApiError` with an HTTP status. Mutations
are committed to the store (etcd, guarded by the leader's epoch) first and
then turned into commands by reconciliation, so a deploy answered 200
survives a failover even if the leader dies right after; one whose reply
never reached the operator is safe to re-post (deploys are idempotent by
content). A deposed leader's mutation is refused by etcd and answered 503
``not_leader`` with the leader's address; it never reaches a node.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable
from typing import Any

import trio

from huselet.central.errors import (
    CentralError,
    Deposed,
    NotLeader,
    PlacementError,
    StoreUnavailable,
)
from huselet.central.etcd import EtcdError
from huselet.central.placement import NodeInfo, choose_nodes, reserved_by_node
from huselet.central.server import CentralScheduler
from protocol.delta import CommandBacklogFull, DeltaUsageError

FUNCTION_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")  # as in huselet.config
MAX_SPEC_BYTES = 64 * 1024
MAX_WAIT_S = 60.0
NODE_COMMANDS = {"drain": "drain", "undrain": "undrain", "prefetch": "prefetch_images"}


class ApiError(CentralError):
    def __init__(self, status: int, code: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.extra = extra

    def body(self) -> dict[str, Any]:
        return {"error": self.code, "message": self.message, **self.extra}


class FleetApi:
    def __init__(self, central: CentralScheduler) -> None:
        self.central = central

    # --- reading ---------------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        c = self.central
        return {
            "role": c.role,
            "scheduler_id": c.settings.scheduler_id,
            "epoch": c.epoch,
            "leader": c.leader_info(),
            "nodes": len(c.by_node),
        }

    def _leader(self) -> CentralScheduler:
        c = self.central
        if c.fleet is None or not c.backend.valid():
            raise ApiError(503, "standby", "this scheduler is a standby", leader=c.leader_info())
        return c

    async def _commit(self, records: list[dict[str, Any]], nodes: Iterable[str]) -> None:
        """Make ``records`` durable (guarded by our epoch), then reconcile ``nodes``."""
        c = self.central
        try:
            await c.store.commit(records)
        except (Deposed, NotLeader) as exc:
            raise ApiError(503, "not_leader", str(exc), leader=c.leader_info()) from None
        except (StoreUnavailable, EtcdError) as exc:
            raise ApiError(503, "store_unavailable", f"not stored, retry: {exc}") from None
        for node_id in sorted(set(nodes)):
            c.mark(node_id)

    def fleet(self) -> dict[str, Any]:
        c = self._leader()
        assert c.fleet is not None
        nodes = {}
        for node_id, record in sorted(c.fleet.records.items()):
            view = record.view
            by_state: Counter[str] = Counter()
            for kind, _, _, body in view.entries():
                if kind == "instance" and isinstance(body, dict):
                    by_state[str(body.get("state"))] += 1
            capacity = view.get("capacity", "node")
            node = view.get("node", "self")
            nodes[node_id] = {
                "connected": node_id in c.by_node,
                "alive": record.alive,
                "boot_id": record.boot_id,
                "awaiting_snapshot": record.awaiting_snapshot,
                "resources": len(view),
                "functions": {n: r.version for n, r in sorted(c.reported.get(node_id, {}).items())},
                "instances": sum(by_state.values()),
                "by_state": dict(by_state),
                "capacity": capacity[1] if capacity else None,
                "placements": node[1].get("placements")
                if node and isinstance(node[1], dict)
                else None,
                "pending_commands": len(record.pending),
            }
        return {
            **self.health(),
            "nodes": nodes,
            "functions": self.functions(),
            "counters": dict(c.counters),
        }

    def node(self, node_id: str) -> dict[str, Any]:
        c = self._leader()
        assert c.fleet is not None
        record = c.fleet.records.get(node_id)
        if record is None:
            raise ApiError(404, "unknown_node", f"no node {node_id!r}")
        return {
            "node_id": node_id,
            "boot_id": record.boot_id,
            "connected": node_id in c.by_node,
            "resources": [[k, n, v, b] for k, n, v, b in record.view.entries()],
            "pending_commands": list(record.pending),
        }

    def functions(self) -> list[dict[str, Any]]:
        c = self._leader()
        return [
            {
                "name": e.name,
                "version": e.version,
                "nodes": e.nodes,
                "quota": e.quota,
                "spec": e.spec,
            }
            for e in sorted(c.store.state.functions.values(), key=lambda e: e.name)
        ]

    def command(self, cmd_id: str) -> dict[str, Any]:
        c = self._leader()
        if cmd_id in c.results:
            return {"cmd_id": cmd_id, **c.results[cmd_id]}
        pending = c.store.state.pending.get(cmd_id)
        if pending is None:
            raise ApiError(404, "unknown_command", f"no command {cmd_id!r}")
        return {"cmd_id": cmd_id, "node": pending.node, "status": "pending"}

    # --- functions ---------------------------------------------------------------------------

    async def deploy(self, body: Any) -> dict[str, Any]:
        c = self._leader()
        if not isinstance(body, dict):
            raise ApiError(400, "bad_request", "the body must be a JSON object")
        spec = _spec(body.get("spec"))
        replicas = _optional_int(body, "replicas")
        wanted = body.get("nodes")
        if wanted is not None and (
            not isinstance(wanted, list) or not all(isinstance(n, str) for n in wanted)
        ):
            raise ApiError(400, "bad_request", "nodes must be an array of node ids")
        wait_s = _wait(body)
        state = c.store.state
        name = spec["name"]
        current = state.functions.get(name)
        if wanted is not None:
            placement = sorted(set(wanted))
        elif current is not None:
            placement = current.nodes
        else:
            others = [e for e in state.functions.values() if e.name != name]
            try:
                placement = choose_nodes(
                    self._node_infos(), spec, reserved_by_node(others), replicas=replicas
                )
            except PlacementError as exc:
                raise ApiError(409, "no_capacity", str(exc)) from None
        changed = current is None or current.spec != spec or current.nodes != placement
        version = current.version if current is not None else 0
        if changed:
            version = state.versions.get(name, 0) + 1
            record = {"t": "fn", "name": name, "version": version, "spec": spec}
            record["nodes"] = placement
            if current is not None and current.quota:
                record["quota"] = current.quota
            affected = set(placement) | set(current.nodes if current is not None else ())
            await self._commit([record], affected)
        status = await self._rollout(name, version, placement, wait_s)
        return {
            "name": name,
            "version": version,
            "nodes": placement,
            "changed": changed,
            "status": status,
        }

    async def remove(self, name: str) -> dict[str, Any]:
        c = self._leader()
        entry = c.store.state.functions.get(name)
        if entry is None:
            raise ApiError(404, "unknown_function", f"no function {name!r}")
        version = c.store.state.versions[name]
        await self._commit([{"t": "rm", "name": name, "version": version}], entry.nodes)
        return {"name": name, "removed_from": entry.nodes}

    async def set_quota(self, name: str, body: Any) -> dict[str, Any]:
        c = self._leader()
        entry = c.store.state.functions.get(name)
        if entry is None:
            raise ApiError(404, "unknown_function", f"no function {name!r}")
        if not isinstance(body, dict):
            raise ApiError(400, "bad_request", "the body must be a JSON object")
        limits = dict(entry.quota or {})
        for key in ("max_instances", "min_instances"):
            value = _optional_int(body, key, minimum=0 if key == "min_instances" else 1)
            if value is not None:
                limits[key] = value
        if not limits:
            raise ApiError(400, "bad_request", "give max_instances and/or min_instances")
        await self._commit([{"t": "quota", "name": name, "limits": limits}], entry.nodes)
        return {"name": name, "quota": limits}

    # --- nodes ----------------------------------------------------------------------------------

    async def node_command(self, node_id: str, action: str, body: Any) -> dict[str, Any]:
        c = self._leader()
        assert c.fleet is not None
        kind = NODE_COMMANDS.get(action)
        if kind is None:
            raise ApiError(404, "not_found", f"no node action {action!r}")
        if node_id not in c.fleet.records:
            raise ApiError(404, "unknown_node", f"no node {node_id!r}")
        args = body if isinstance(body, dict) else {}
        command_body = {"images": args.get("images", [])} if kind == "prefetch_images" else {}
        try:
            cmd_id = await c.issue(node_id, kind, command_body)
        except (CommandBacklogFull, DeltaUsageError) as exc:
            raise ApiError(429, "backlog_full", str(exc)) from None
        except (Deposed, NotLeader) as exc:
            raise ApiError(503, "not_leader", str(exc), leader=c.leader_info()) from None
        except (StoreUnavailable, EtcdError) as exc:
            raise ApiError(503, "store_unavailable", f"not stored, retry: {exc}") from None
        deadline = trio.current_time() + _wait(args)
        while cmd_id not in c.results and trio.current_time() < deadline:
            await c.changed(deadline)
        return self.command(cmd_id)

    def _node_infos(self) -> list[NodeInfo]:
        c = self.central
        assert c.fleet is not None
        infos = []
        for node_id, record in c.fleet.records.items():
            node = record.view.get("node", "self")
            capacity = record.view.get("capacity", "node")
            infos.append(
                NodeInfo(
                    node_id,
                    connected=node_id in c.by_node and not record.awaiting_snapshot,
                    placements=str(node[1].get("placements")) if node else "unknown",
                    memory_mb=int(capacity[1].get("memory_mb", 0)) if capacity else 0,
                )
            )
        return infos

    async def _rollout(
        self, name: str, version: int, nodes: list[str], wait_s: float
    ) -> dict[str, str]:
        """Per node ``ok`` | ``failed`` | ``pending``, waiting up to ``wait_s`` for the answers."""
        c = self.central
        deadline = trio.current_time() + wait_s
        while True:
            status = {}
            for node_id in nodes:
                have = c.reported.get(node_id, {}).get(name)
                failed = c.failed.get(node_id, {}).get(name)
                if have is not None and have.version >= version:
                    status[node_id] = "ok"
                elif failed is not None and failed[0] == version:
                    status[node_id] = "failed"
                else:
                    status[node_id] = "pending"
            if "pending" not in status.values() or trio.current_time() >= deadline:
                return status
            await c.changed(deadline)


def _spec(spec: Any) -> dict[str, Any]:
    if not isinstance(spec, dict):
        raise ApiError(400, "bad_request", "spec must be a function table (a JSON object)")
    name = spec.get("name")
    if not isinstance(name, str) or not FUNCTION_NAME.match(name):
        raise ApiError(400, "bad_request", "spec.name must be a function name")
    if not isinstance(spec.get("handler"), str):
        raise ApiError(400, "bad_request", 'spec.handler must be "module:function"')
    if "version" in spec:
        raise ApiError(400, "bad_request", "spec.version is assigned by the scheduler")
    if len(json.dumps(spec)) > MAX_SPEC_BYTES:
        raise ApiError(413, "too_large", f"a spec is at most {MAX_SPEC_BYTES} bytes")
    return spec


def _optional_int(body: dict[str, Any], key: str, *, minimum: int = 1) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    if type(value) is not int or value < minimum:
        raise ApiError(400, "bad_request", f"{key} must be an integer ≥ {minimum}")
    return value


def _wait(body: dict[str, Any]) -> float:
    value = body.get("wait_s", 0)
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not 0 <= value <= MAX_WAIT_S
    ):
        raise ApiError(400, "bad_request", f"wait_s must be a number in [0, {MAX_WAIT_S:g}]")
    return float(value)
