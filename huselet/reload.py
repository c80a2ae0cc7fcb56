"""Graceful reload: SIGHUP (or ``huselet ctl reload``) re-reads the TOML file.

What applies live, without dropping traffic:

- a function added → its socket opens and its pool starts taking requests;
- a function removed → its pool stops taking requests, finishes what it
  accepted, then stops its instances;
- a function's limits changed (instances, timeouts, queue, ``idempotent``) →
  updated in place, warm instances keep serving;
- anything else about a function changed (code, handler, runtime, env,
  memory, mode) → a new pool takes new requests while the old one finishes;
- package directories are re-packed (an unchanged tree reuses its pack) and
  image files re-read; a function whose code digest changed is redeployed:
  new requests go to new instances (and a new fork zygote) of the new code
  while the old instances finish what they hold, then stop (``code``). The
  reload waits for re-packs at most ``wait_s`` (``huselet ctl reload``: a
  little less than its ``--timeout``; SIGHUP: :data:`CODE_WAIT_S`), so a pack
  that runs pip for minutes never holds the reply, the reload lock or the
  other changes: it goes on in the background, is reported as ``packing``,
  and its function is redeployed when it is done;
- a function unchanged whose breaker is open → it gets its half-open trial
  now (the operator just said "fixed": don't make them wait the backoff).

What does not apply live — ``[node]``, ``[gateway]``, ``[admin]``, ``[cache]``,
``[scheduler]``, ``[runtimes]``, ``[health]``, ``[metrics]``, ``[log]`` — is reported as needing a
restart and the running values stay. An invalid file is refused whole with
its error; nothing changes. Functions deployed by the central scheduler are
not the file's to touch.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Protocol

import trio

from huselet.config import Config, FunctionSettings, load_config
from huselet.dispatch.functions import FunctionDeployment
from huselet.dispatch.sources import CodeSource
from huselet.errors import ConfigError, HuseletError
from huselet.log import get_logger
from huselet.runtime.base import Runtime
from huselet.runtime.validate import check_runtimes

log = get_logger("reload")

# Function settings that a running pool can take in place.
LIVE_FIELDS = frozenset(
    {
        "max_instances",
        "min_instances",
        "timeout_ms",
        "idle_timeout_ms",
        "start_timeout_ms",
        "max_queue",
        "idempotent",
        "rate",  # admission limits: re-tuned, buckets kept
        "max_concurrent",
    }
)
READ_TIMEOUT_S = 10.0
CODE_WAIT_S = 3.0  # how long a reload waits for re-packed code unless told otherwise
SECTIONS_NEEDING_RESTART = (
    *("node", "gateway", "admin", "cache", "scheduler", "runtimes", "health", "metrics", "log"),
)


class ReloadRefused(HuseletError):
    """The new configuration cannot be applied; the running one stays."""

    status = 409
    code = "reload_refused"


class CodeRefresher(Protocol):
    """What a reload asks of the package cache (:class:`~huselet.code.packages.PackageManager`)."""

    async def refresh(
        self, functions: Iterable[FunctionSettings], *, wait_s: float = ...
    ) -> set[str]: ...

    def packing(self, functions: Iterable[FunctionSettings]) -> list[str]: ...


class ConfigReloader:
    def __init__(
        self,
        config: Config,
        functions: FunctionDeployment,  # the daemon's, shared with the code watch
        runtimes: Mapping[str, Runtime],
        known_runtimes: Iterable[str],
        on_applied: Callable[[Config], None],
        code: CodeRefresher | None = None,
    ) -> None:
        self.config = config
        self.functions = functions
        self.runtimes = runtimes
        self.known_runtimes = frozenset(known_runtimes)
        self.on_applied = on_applied
        # Re-reads function code that may have changed on disk (packed directories,
        # image files). Functions whose code changed are redeployed by the
        # package manager's on_code_changed, not here.
        self.code = code
        self._lock = trio.Lock()  # one reload at a time (SIGHUP and ctl may race)
        self.reloads = 0
        self.refused = 0
        self.last: dict[str, Any] | None = None

    async def reload(self, wait_s: float = CODE_WAIT_S) -> dict[str, Any]:
        """Apply the file; wait at most ``wait_s`` for re-packed code (see the docstring)."""
        async with self._lock:
            try:
                outcome = await self._reload(wait_s)
            except HuseletError as exc:
                self.refused += 1
                self.last = {"applied": False, "error": exc.message}
                log.error("reload refused; the running configuration stays", error=exc.message)
                raise
            self.reloads += 1
            self.last = outcome
            log.info("configuration reloaded", **outcome)
            return outcome

    async def _reload(self, wait_s: float) -> dict[str, Any]:
        source = self.config.source
        if source is None:
            raise ReloadRefused(
                "running on the embedded default config: there is no file to reload"
            )
        try:
            # Validation reads the file and stats packages: off the event loop,
            # and with a deadline (a hung file system must not wedge reloads).
            with trio.fail_after(READ_TIMEOUT_S):
                new = await trio.to_thread.run_sync(
                    lambda: _load_and_check(source, self.known_runtimes),
                    abandon_on_cancel=True,
                )
        except ConfigError as exc:
            raise ReloadRefused(f"{source}: {exc}") from None
        except trio.TooSlowError:
            raise ReloadRefused(f"{source}: not read within {READ_TIMEOUT_S:g} s") from None
        except Exception as exc:
            # A bug in validation must refuse this reload, not take the daemon down.
            log.exception("reload: validating the new file failed unexpectedly")
            raise ReloadRefused(f"{source}: cannot be validated ({type(exc).__name__})") from None
        old_fns = {fn.name: fn for fn in self.config.functions}
        new_fns = {fn.name: fn for fn in new.functions}
        self._check(new, old_fns)

        outcome: dict[str, Any] = {
            "applied": True,
            "added": [],
            "removed": [],
            "updated": [],
            "replaced": [],
            "trial": [],
            "code": [],
            "restart_required": [
                section
                for section in SECTIONS_NEEDING_RESTART
                if getattr(new, section) != getattr(self.config, section)
            ],
        }
        if self.code is not None:
            outcome["code"] = sorted(await self.code.refresh(new.functions, wait_s=wait_s))
            outcome["packing"] = self.code.packing(new.functions)
        now = trio.current_time()
        for name in old_fns.keys() - new_fns.keys():
            self.functions.remove(name)
            outcome["removed"].append(name)
        for name, fn in new_fns.items():
            old = old_fns.get(name)
            if old is None:
                await self.functions.deploy(fn, CodeSource.CONFIG)
                outcome["added"].append(name)
            elif fn == old:
                pool = self.functions.dispatcher.pools.get(name)
                if pool is not None and pool.breaker.allow_trial(now):
                    outcome["trial"].append(name)
            elif _changed_fields(old, fn) <= LIVE_FIELDS:
                self.functions.update(fn)
                outcome["updated"].append(name)
            else:
                await self.functions.deploy(fn, CodeSource.CONFIG)
                outcome["replaced"].append(name)
        # Sections that need a restart keep their running values.
        # [auth] applies live too (the daemon re-tunes admission, re-reads the keys file).
        self.config = dataclasses.replace(self.config, functions=new.functions, auth=new.auth)
        self.on_applied(self.config)
        for key in ("added", "removed", "updated", "replaced", "trial"):
            outcome[key].sort()
        if outcome["restart_required"]:
            log.warning(
                "reload: these sections changed but apply only after a restart",
                sections=outcome["restart_required"],
            )
        return outcome

    def _check(self, new: Config, old_fns: Mapping[str, FunctionSettings]) -> None:
        """Refuse before changing anything: a half-applied reload is worse than none."""
        for i, fn in enumerate(new.functions):
            if fn.runtime not in self.runtimes:
                raise ReloadRefused(
                    f"functions[{i}].runtime: runtime {fn.runtime!r} was not started with the "
                    "daemon; adding a runtime needs a restart"
                )
            if fn.name not in old_fns and self.functions.source(fn.name) is CodeSource.SCHEDULER:
                raise ReloadRefused(
                    f"functions[{i}].name: {fn.name!r} is deployed here by the central "
                    "scheduler; the file cannot take it over"
                )

    def describe(self) -> dict[str, Any]:
        return {
            "source": str(self.config.source) if self.config.source else None,
            "reloads": self.reloads,
            "refused": self.refused,
            "last": self.last,
        }


def _load_and_check(source: Path, known_runtimes: Iterable[str]) -> Config:
    """The new file validated as ``run`` would, runtime tables included (in a thread)."""
    new = load_config(source, known_runtimes=known_runtimes)
    # [runtimes] changes apply only after a restart, which must then not fail.
    check_runtimes(new)
    return new


def _changed_fields(old: FunctionSettings, new: FunctionSettings) -> set[str]:
    return {
        f.name
        for f in dataclasses.fields(FunctionSettings)
        if getattr(old, f.name) != getattr(new, f.name)
    }
