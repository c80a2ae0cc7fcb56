"""The package cache as one daemon component, and its admin commands.

:class:`CodeCache` builds and starts, in this order, the parts that turn
function configs into mapped images:

1. :class:`cache.store.ImageStore` — disk and memory levels under
   ``<state_dir>/cache`` (``images/``, ``quarantine/``; ``packed/`` holds
   images packed from directories, ``extract/`` native extensions);
2. :class:`~huselet.code.packages.PackageManager` — the pools' code provider;
3. :class:`~huselet.code.prefetch.Prefetcher` — hints, prediction, refetches;
4. :class:`~huselet.code.scrub.Scrubber` — paced re-verification;
5. :class:`~huselet.code.publish.PublishWatcher` — only with ``cache.publish_dir``.

Admin commands (registered by the daemon): ``cache`` (images per level,
budgets, counters, recent events), ``prefetch`` (``{"function": name}`` or
``{"digest": hex, "origin": url}``, optional ``"wait": true`` and
``"timeout_s"``) and ``scrub`` (a full pass now).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

import trio

from cache.origin import Origin, origin_from_url
from cache.store import ImageStore
from huselet.code.packages import PackageManager
from huselet.code.prefetch import LiveFetches, Prefetcher, PrefetchTuning
from huselet.code.publish import PublishWatcher
from huselet.code.scrub import Scrubber
from huselet.config import Config
from huselet.errors import BadRequest, Unavailable, UnknownFunction

MiB = 1 << 20
MAX_PREFETCH_WAIT_S = 3600.0


class CodeCache:
    """Store, package manager, prefetcher, scrub and publish watcher. Start with :meth:`run`."""

    def __init__(
        self,
        config: Config,
        invocation_counts: Callable[[], Mapping[str, int]] | None = None,
        *,
        prediction_tick_s: float = 5.0,
        publish_settle_s: float = 0.5,
    ) -> None:
        c = config.cache
        self.config = config
        self.store = ImageStore(
            config.node.state_dir / "cache",
            disk_budget_bytes=c.disk_budget_mb * MiB,
            memory_budget_bytes=c.memory_budget_mb * MiB,
            max_image_bytes=c.max_image_mb * MiB,
            fetch_timeout=c.fetch_timeout_s,
            fetch_attempts=c.fetch_attempts,
        )
        self.live = LiveFetches()
        self.packages = PackageManager(config, self.store, live=self.live)
        # A whole flight: every attempt plus the backoff between them.
        flight_s = c.fetch_timeout_s * c.fetch_attempts + 60
        tuning = PrefetchTuning(
            concurrency=c.prefetch_concurrency,
            queue_size=c.prefetch_queue,
            predict_window_s=c.predict_window_s,
            tick_s=prediction_tick_s,
            fetch_timeout_s=flight_s,
        )
        self.prefetcher = Prefetcher(
            self.store,
            self.live,
            tuning,
            resolve=self.packages.source_of if c.predict else None,
            invocation_counts=invocation_counts if c.predict else None,
        )
        self.packages.refetch = self._refetch
        self.scrubber = Scrubber(
            self.store,
            interval_s=c.scrub_interval_s,
            bytes_per_s=c.scrub_mb_per_s * MiB,
            on_corrupt=self.packages.image_corrupt,
        )
        self.publisher = (
            PublishWatcher(
                c.publish_dir, self.packages, settle_s=publish_settle_s, fetch_timeout_s=flight_s
            )
            if c.publish_dir is not None
            else None
        )

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(self.store.run)
            await nursery.start(self.packages.run)
            await nursery.start(self.prefetcher.run)
            await nursery.start(self.scrubber.run)
            if self.publisher is not None:
                await nursery.start(self.publisher.run)
            task_status.started()

    def _refetch(self, digest: str, origin: Origin) -> None:
        self.prefetcher.hint(digest, origin, reason="refetch")

    # -- disk pressure (driven by huselet.health.pressure) ---------------------------------

    def refuse_installs(self, reason: str | None) -> None:
        """Refuse new images while ``reason`` is set (see :meth:`ImageStore.refuse_installs`)."""
        if (reason is None) != (self.store.installs_refused is None):
            kind = "installs_accepted" if reason is None else "installs_refused"
            self.packages.note(kind, None, reason or "disk pressure over")
        self.store.refuse_installs(reason)

    def evict_unused(self) -> list[str]:
        """Evict every image no instance holds; the digests, each noted for ``ctl cache``."""
        evicted = self.store.evict_unused()
        for image in evicted:
            self.packages.note("evicted", image.digest, "disk pressure", size=image.size)
        return [image.digest for image in evicted]

    # -- admin commands -----------------------------------------------------------------

    def describe(self) -> dict[str, Any]:
        return {
            **self.packages.describe(),
            "prefetch": self.prefetcher.describe(),
            "scrub": self.scrubber.last_pass,
            "publish": self.publisher.describe() if self.publisher else None,
        }

    async def prefetch_command(self, args: dict[str, Any]) -> dict[str, Any]:
        timeout_s = _number(args.get("timeout_s", 60), "timeout_s")
        function = _optional_str(args, "function")
        if function is not None:
            fn = self.packages.functions.get(function)
            if fn is None:
                raise UnknownFunction(f"no function named {function!r} on this node")
            if fn.code_source == "package" and not self.config.cache.pack_directories:
                raise BadRequest(
                    f"function {function!r} is served from a plain directory: nothing to prefetch"
                )
            source = None
            with trio.move_on_after(timeout_s):
                source = await self.packages.resolve(fn)  # CodeUnavailable if it cannot be
            if source is None:
                raise Unavailable(f"function {function!r} is still being packed", retry_after_s=1)
            digest, origin = source
        else:
            digest = _optional_str(args, "digest") or ""
            if not digest:
                raise BadRequest("give a function, or a digest (and an origin)")
            origin = self._origin_for(digest, _optional_str(args, "origin"))
            self.packages.remember(digest, origin, "hint")
        status = self.prefetcher.hint(digest, origin, reason="hint", function=function)
        reply: dict[str, Any] = {"digest": digest, "status": status, "function": function}
        if args.get("wait") and status != "present":
            error = await self.prefetcher.wait(digest, timeout_s)
            reply["status"] = "installed" if error is None else "failed"
            reply["error"] = error
        return reply

    def _origin_for(self, digest: str, url: str | None) -> Origin:
        if url is None:
            known = self.packages.origin_of(digest)
            if known is not None:
                return known
            url = self.config.cache.default_origin
            if url is None:
                raise BadRequest("no origin given and cache.default_origin is not set")
        if not urlsplit(url).scheme and not os.path.isabs(url):
            raise BadRequest(f"origin must be an absolute directory or a URL, got {url[:200]!r}")
        try:
            return origin_from_url(url)
        except ValueError as exc:
            raise BadRequest(str(exc)) from None


def _optional_str(args: Mapping[str, Any], key: str) -> str | None:
    value = args.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise BadRequest(f"{key} must be a string")
    return value


def _number(value: Any, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise BadRequest(f"{key} must be a number")
    if not 0 < value <= MAX_PREFETCH_WAIT_S:
        raise BadRequest(f"{key} must be in (0, {MAX_PREFETCH_WAIT_S:g}]")
    return float(value)
