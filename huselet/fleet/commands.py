"""What each central-scheduler command does to this node.

Command bodies (PROTOCOL.md §6.5 leaves them to the application):

- ``deploy_function`` / ``update_function`` — ``{"version": int ≥ 1, "spec": {…}}``
  where ``spec`` is one ``[[functions]]`` table (name, handler, package | image
  | digest + origin, runtime, limits), validated exactly like the config file.
  Applying is idempotent by version: a version ≤ the deployed one changes
  nothing and answers ``{"applied": false}``. A *new* function is a new
  placement and is refused while placements are closed (drained, or the lease
  ran out); an update of a deployed one is not.
- ``remove_function`` — ``{"name"}``; the pool finishes what it accepted.
- ``set_quota`` — ``{"name", "max_instances"?, "min_instances"?}``.
- ``prefetch_images`` — ``{"images": [...]}``; handed to the daemon's
  prefetcher when it has one, else answered with error ``unsupported``.
- ``drain`` / ``undrain`` — close/open the node for new placements; what is
  deployed keeps serving either way.

Functions configured in the node's own TOML belong to the operator of the
node, not to the scheduler: commands cannot replace or remove them. Every
deployed spec is checked against the node's ``[scheduler]`` policy
(:mod:`huselet.fleet.policy`; error ``policy``). PROTOCOL.md Appendix C is the
full catalogue of bodies, results and error codes.

Deployed functions are kept in ``state_dir/fleet-functions.json`` (written
atomically) and re-deployed when the daemon restarts, so a node keeps serving
them even if no scheduler is reachable at boot (static stability).
"""

from __future__ import annotations

import json
from collections import Counter, OrderedDict
from collections.abc import Callable, Hashable, Iterable
from pathlib import Path
from typing import Any, TypeVar

from cache.durable import write_atomically
from huselet.config import Config, parse_function_spec
from huselet.config.trust import DeployPolicy
from huselet.dispatch.functions import FunctionDeployment
from huselet.dispatch.sources import CodeSource
from huselet.errors import HuseletError
from huselet.fleet.policy import check_paths, check_spec
from huselet.log import get_logger

log = get_logger("fleet")

SOURCE_SCHEDULER = CodeSource.SCHEDULER
SEEN_IDS = 8192  # command ids remembered to prove none was executed twice
MAX_PREFETCH = 256  # images in one prefetch command

K = TypeVar("K", bound=Hashable)


class CommandFailed(HuseletError):
    """A command could not be applied; ``code`` goes back to the scheduler."""

    code = "command_failed"

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code

    def payload(self) -> dict[str, Any]:
        return {"error": self.code, "message": self.message}


class FunctionStore:
    """The deployed functions on disk: ``{name: {"version", "spec"}}``, replaced atomically."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> dict[str, dict[str, Any]]:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.error("cannot read deployed functions; starting without them", error=str(exc))
            return {}
        return data if isinstance(data, dict) else {}

    def save(self, functions: dict[str, dict[str, Any]]) -> None:
        try:
            write_atomically(self.path, json.dumps(functions, sort_keys=True))
        except OSError as exc:
            # Serving must not stop because the state disk is full; a restart
            # then simply waits for the scheduler to deploy again.
            log.error("cannot save deployed functions", error=str(exc))


class FleetCommands:
    """Executes scheduler commands against the node's dispatcher and link sockets."""

    def __init__(
        self,
        config: Config,
        functions: FunctionDeployment,  # the daemon's, shared with the reload
        *,
        known_runtimes: Iterable[str],
        on_placements: Callable[[str], None],
        store: FunctionStore | None = None,
        prefetcher: Callable[[], Any] | None = None,  # the daemon's, looked up when needed
        policy: DeployPolicy | None = None,  # default: config.scheduler's, else the default
    ) -> None:
        self.config = config
        link = config.scheduler if config is not None else None
        self.policy = policy or (link.policy if link is not None else DeployPolicy())
        # Without a [scheduler] table (tests), the policy's own bound is the only one.
        self.offered_memory_mb = link.memory_mb if link is not None else 1 << 20
        self.dispatcher = functions.dispatcher
        self.functions = functions
        self.known_runtimes = frozenset(known_runtimes)
        self._on_placements = on_placements
        self.store = store
        self.prefetcher = prefetcher
        self.deployed: dict[str, dict[str, Any]] = {}  # name -> {"version", "spec"}
        self.drained = False
        self.lease_held = False
        self.executed: Counter[str] = Counter()  # by kind
        self.failed: Counter[str] = Counter()  # by error code
        self.duplicates = 0  # a cmd_id executed twice in this boot: must stay 0
        self.duplicate_applies = 0  # one (function, version) applied twice: must stay 0
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._applied: OrderedDict[tuple[str, int], None] = OrderedDict()

    # --- placements -------------------------------------------------------------------

    @property
    def placements(self) -> str:
        if self.drained:
            return "drained"
        return "open" if self.lease_held else "lease_expired"

    def set_lease(self, held: bool) -> None:
        self.lease_held = held
        self._on_placements(self.placements)

    # --- execution ---------------------------------------------------------------------

    async def execute(self, cmd_id: str, kind: str, body: Any) -> dict[str, Any]:
        """Run one command; returns the result payload or raises :class:`CommandFailed`."""
        if _seen_before(self._seen, cmd_id):
            self.duplicates += 1
            log.error("command executed twice", cmd_id=cmd_id, kind=kind)
        self.executed[kind] += 1
        if not isinstance(body, dict):
            raise CommandFailed("the command body must be a map", "bad_command")
        try:
            if kind in ("deploy_function", "update_function"):
                return await self._deploy(body, update=kind == "update_function")
            if kind == "remove_function":
                return self._remove(body)
            if kind == "set_quota":
                return self._set_quota(body)
            if kind == "prefetch_images":
                return await self._prefetch(body)
            if kind in ("drain", "undrain"):
                self.drained = kind == "drain"
                self._on_placements(self.placements)
                return {"placements": self.placements}
        except CommandFailed as exc:
            self.failed[exc.code] += 1
            raise
        except HuseletError as exc:
            self.failed[exc.code] += 1
            raise CommandFailed(exc.message, exc.code) from None
        self.failed["unsupported"] += 1
        raise CommandFailed(f"command kind {kind!r} is not implemented", "unsupported")

    async def _deploy(self, body: dict[str, Any], *, update: bool) -> dict[str, Any]:
        version, spec = body.get("version"), body.get("spec")
        if type(version) is not int or version < 1:
            raise CommandFailed("version must be a positive integer", "bad_command")
        if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
            raise CommandFailed("spec must be a function table with a name", "bad_command")
        name = spec["name"]
        if self.functions.source(name) not in (None, SOURCE_SCHEDULER):
            raise CommandFailed(f"function {name!r} is configured on the node", "not_owned")
        current = self.deployed.get(name)
        if current is not None and current["version"] >= version:
            return {"applied": False, "version": current["version"]}
        if current is None and update:
            raise CommandFailed(f"function {name!r} is not deployed here", "unknown_function")
        if current is None and self.placements != "open":
            raise CommandFailed(f"the node takes no new placements ({self.placements})", "closed")
        await self._apply(name, version, spec)
        self._save()
        return {"applied": True, "version": version}

    async def _apply(self, name: str, version: int, spec: dict[str, Any]) -> None:
        check_paths(spec, self.policy, base_dir=self.config.node.state_dir)
        fn = parse_function_spec(
            spec, self.config, known_runtimes=self.known_runtimes, where=f"spec({name})"
        )
        check_spec(
            fn,
            self.policy,
            offered_memory_mb=self.offered_memory_mb,
            default_origin=self.config.cache.default_origin,
        )
        if _seen_before(self._applied, (name, version)):
            self.duplicate_applies += 1
            log.error("function version applied twice", function=name, version=version)
        await self.functions.deploy(fn, SOURCE_SCHEDULER, version)
        self.deployed[name] = {"version": version, "spec": spec}
        log.info("function deployed", function=name, version=version)

    def _remove(self, body: dict[str, Any]) -> dict[str, Any]:
        name = body.get("name")
        if not isinstance(name, str):
            raise CommandFailed("name must be a string", "bad_command")
        if name in self.dispatcher.pools and name not in self.deployed:
            raise CommandFailed(f"function {name!r} is configured on the node", "not_owned")
        removed = self.deployed.pop(name, None) is not None
        if removed:
            self.functions.remove(name)
            self._save()
            log.info("function removed", function=name)
        return {"removed": removed}

    def _set_quota(self, body: dict[str, Any]) -> dict[str, Any]:
        name = body.get("name")
        pool = self.dispatcher.pools.get(name) if isinstance(name, str) else None
        if pool is None:
            raise CommandFailed(f"no function named {name!r} on this node", "unknown_function")
        limits = {
            key: body.get(key, getattr(pool.settings, key))
            for key in ("max_instances", "min_instances")
        }
        for key, value in limits.items():
            if type(value) is not int or value < (1 if key == "max_instances" else 0):
                raise CommandFailed(f"{key} must be a non-negative integer", "bad_command")
        if limits["min_instances"] > limits["max_instances"]:
            raise CommandFailed("min_instances exceeds max_instances", "bad_command")
        self.dispatcher.set_quota(str(name), **limits)
        return limits

    async def _prefetch(self, body: dict[str, Any]) -> dict[str, Any]:
        images = body.get("images")
        if not isinstance(images, list) or len(images) > MAX_PREFETCH:
            raise CommandFailed(f"images must be an array of at most {MAX_PREFETCH}", "bad_command")
        # The package cache's admin command takes {"digest", "origin"} or {"function"};
        # a daemon without a cache says so plainly.
        target = self.prefetcher() if self.prefetcher is not None else None
        prefetch = getattr(target, "prefetch_command", None)
        if prefetch is None:
            raise CommandFailed("this node has no image prefetcher", "unsupported")
        out: list[dict[str, Any]] = []
        for item in images:
            if not isinstance(item, dict):
                out.append({"error": "bad_command", "message": "an image must be a map"})
                continue
            args = {k: item[k] for k in ("digest", "origin", "function") if k in item}
            try:
                reply = await prefetch(args)
            except HuseletError as exc:
                out.append({"error": exc.code, "message": exc.message})
                continue
            out.append({"digest": reply.get("digest"), "status": reply.get("status")})
        return {"images": out}

    # --- persistence -------------------------------------------------------------------

    def _save(self) -> None:
        if self.store is not None:
            self.store.save(self.deployed)

    async def restore(self) -> None:
        """Re-deploy what the scheduler had deployed before the daemon restarted."""
        if self.store is None:
            return
        for name, entry in self.store.load().items():
            try:
                version, spec = entry["version"], entry["spec"]
                if name in self.dispatcher.pools:
                    raise CommandFailed("a configured function has this name", "not_owned")
                await self._apply(name, version, spec)
            except (HuseletError, KeyError, TypeError) as exc:
                log.error("cannot restore deployed function", function=name, error=str(exc))
        self._save()


def _seen_before(seen: OrderedDict[K, None], key: K) -> bool:
    """Remember ``key`` among the last :data:`SEEN_IDS`; True if it was remembered already."""
    again = key in seen
    seen[key] = None
    while len(seen) > SEEN_IDS:
        seen.popitem(last=False)
    return again
