"""Deploying, replacing, updating and removing a function on the running node.

Both the config reload (:mod:`huselet.reload`) and the central scheduler's
commands (:mod:`huselet.fleet.commands`) change which functions the node
serves. What that takes is written here once: a function's link socket opens
before its pool can start an instance, a replaced pool finishes what it
accepted while the new one takes new requests, and every function remembers
where it came from (:class:`~huselet.dispatch.sources.CodeSource`) so neither
side takes over the other's functions.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Protocol

from huselet.config import FunctionSettings
from huselet.dispatch.api import FunctionDeployer
from huselet.dispatch.sources import CodeSource


class LinkSockets(Protocol):
    """The per-function link sockets (:class:`~huselet.dispatch.links.LinkServer`)."""

    async def add_function(self, name: str) -> None: ...


class FunctionDeployment:
    """One way to change the node's functions, shared by reload and the fleet."""

    def __init__(self, dispatcher: FunctionDeployer, links: LinkSockets) -> None:
        self.dispatcher = dispatcher
        self.links = links

    def source(self, name: str) -> CodeSource | None:
        """Who deployed ``name`` (None: not deployed here)."""
        if name not in self.dispatcher.pools:
            return None
        meta: Mapping[str, Any] = self.dispatcher.function_meta.get(name, {})
        return CodeSource(meta.get("source", CodeSource.CONFIG))

    async def deploy(self, fn: FunctionSettings, source: CodeSource, version: int = 0) -> None:
        """Serve ``fn``: added if new, else replacing the pool of that name.

        The socket opens first (idempotent), so the new pool's first instance
        can connect; the old pool, if any, finishes what it accepted.
        """
        await self.links.add_function(fn.name)
        meta: dict[str, Any] = {"source": source}
        if version:
            meta["version"] = version
        self.dispatcher.deploy_function(fn, meta)

    def redeploy(self, names: Iterable[str]) -> list[str]:
        """New code for these functions (re-packed, image rewritten): deploy it again.

        Same settings, source and version; a new pool takes new requests at
        once, so they start instances (and a fork zygote) of the new code, while
        the old pool finishes what it accepted on the old instances. A function
        not served, or already retiring, is skipped. Returns the redeployed names.
        """
        done = []
        for name in sorted(names):
            pool = self.dispatcher.pools.get(name)
            if pool is None or not pool.accepting:
                continue
            meta = self.dispatcher.function_meta.get(name, {"source": CodeSource.CONFIG})
            self.dispatcher.deploy_function(pool.settings, dict(meta))
            done.append(name)
        return done

    def update(self, fn: FunctionSettings) -> None:
        """New limits for a running function; its pool and warm instances stay."""
        self.dispatcher.update_function(fn)

    def remove(self, name: str) -> bool:
        """Stop serving ``name``; its pool finishes what it accepted. False if not served."""
        return self.dispatcher.remove_function(name)
