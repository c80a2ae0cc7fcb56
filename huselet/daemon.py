"""The composition root: builds every component and runs them in one nursery.

Start order (each ``await nursery.start(component.run)`` returns once that
component is ready): runtimes → package cache (image store, package manager,
prefetcher, scrub, publish watcher) → instance link sockets → dispatcher →
link to the central scheduler (only with ``[scheduler]``) →
admin socket → HTTP ingress; then ``READY=1`` to systemd. SIGTERM/SIGINT
drains: the ingress answers 503 to new requests, accepted ones finish within
``node.drain_grace_ms``, instances stop, the process exits 0.
"""

from __future__ import annotations

import functools
import logging
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

import huselet
from huselet.admin import commands as admin_commands
from huselet.admin.errors import AdminCommandError
from huselet.admin.server import AdminServer
from huselet.code.codecache import CodeCache
from huselet.code.codewatch import CodeWatcher
from huselet.code.packages import REFRESH_WAIT_S
from huselet.config import Config, FunctionSettings
from huselet.config.limits import read_token
from huselet.dispatch.counters import PoolCounter
from huselet.dispatch.dispatcher import Dispatcher
from huselet.dispatch.functions import FunctionDeployment
from huselet.dispatch.links import LinkServer
from huselet.errors import ConfigError, HuseletError
from huselet.gateway.admission import Admission
from huselet.gateway.framed import FramedIngress
from huselet.gateway.http import HttpIngress
from huselet.health.supervisor import HealthSupervisor
from huselet.health.wiring import build_health
from huselet.log import get_logger
from huselet.notify import SystemdNotifier
from huselet.observe.node import NodeObservability
from huselet.reload import CODE_WAIT_S, ConfigReloader
from huselet.runtime import available_runtimes, create_runtimes
from huselet.runtime.base import RuntimeConfigError
from huselet.runtime.output import OUTPUT_STATS
from huselet.tenants.keys import KeyRing
from huselet.tenants.keystore import KeyStore
from protocol.frames import DEFAULT_MAX_FRAME

if TYPE_CHECKING:
    # Imported where used, and only with [scheduler]: a standalone node (the
    # default) never loads the fleet link or the delta protocol.
    from huselet.fleet import FleetCommands, SchedulerLink

log = get_logger("daemon")

# A frame must carry the largest body plus msgpack overhead.
FRAME_OVERHEAD = 64 * 1024
MAX_DEBUG_BLOCK_MS = 60_000


class StartupError(HuseletError):
    """The daemon cannot start (directory, port, socket); the message says why."""

    code = "startup"


def _prepare_dir(path: Path, mode: int, key: str) -> None:
    try:
        path.mkdir(mode=mode, parents=True, exist_ok=True)
    except OSError as exc:
        raise StartupError(f"cannot create {key} {path}: {exc.strerror}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise StartupError(f"{key} {path} is not writable by uid {os.geteuid()}")


class Daemon:
    def __init__(self, config: Config, *, notifier: SystemdNotifier | None = None) -> None:
        self.config = config
        self.notifier = notifier or SystemdNotifier.from_env()
        self.started_at = trio.current_time()
        max_frame = max(DEFAULT_MAX_FRAME, config.gateway.max_body_bytes + FRAME_OVERHEAD)
        try:
            self.runtimes = create_runtimes(
                {fn.runtime for fn in config.functions} | {"process"},
                config.runtimes,
                node=config.node,
            )
        except RuntimeConfigError as exc:  # a [runtimes.*] table: one line, no traceback
            raise StartupError(str(exc)) from None
        for name, runtime in self.runtimes.items():
            # Lets a runtime prepare ahead of need (fork builds its zygotes at start).
            runtime.expect([fn for fn in config.functions if fn.runtime == name])
        self.links = LinkServer(config.node.run_dir, self._claim_link, max_frame=max_frame)
        self.cache: CodeCache = CodeCache(config, self._invocation_counts)
        for runtime in self.runtimes.values():
            runtime.use_code(self.cache.packages)  # so fork's eager zygotes use the packed image
        self.dispatcher: Dispatcher = Dispatcher(
            config, self.runtimes, self.links.socket_path, code=self.cache.packages
        )
        # The one way the node's functions change (reload, fleet commands, new code);
        # made here because the fleet link below builds its commands at once.
        self.functions = FunctionDeployment(self.dispatcher, self.links)
        self.admin = AdminServer(config.admin)
        # Metrics, the request story (access log, log ring) and the metrics listener.
        self.observability = NodeObservability(config, self.dispatcher)
        self.metrics = self.observability.metrics
        self.log_ring = self.observability.log_ring
        self.metrics_server = self.observability.server
        # The link to the central scheduler; None: a standalone node, as before.
        self.fleet: SchedulerLink | None = None
        if config.scheduler is not None:
            from huselet.fleet import SchedulerLink

            self.fleet = SchedulerLink(config.scheduler, self.dispatcher, self._fleet_commands)
        token = _read_token(config.gateway.auth_token_file)
        self.keys = KeyStore(config.auth.keys_file, poll_s=config.auth.keys_poll_ms / 1000)
        self.admission = Admission(
            config.auth,
            bearer_token=None if token is None else token.encode("utf-8"),
            functions=self._function_policy,
        )
        self.keys.on_change = self._keys_changed
        if self.keys.enabled:
            try:
                self.keys.load()
            except ConfigError as exc:
                raise StartupError(f"auth.keys_file: {exc.message}") from None
        self.ingress = HttpIngress(
            config.gateway, self.dispatcher, auth_token=token, admission=self.admission
        )
        # The framed ingress shares the dispatch core and the admission (signatures,
        # tenants, limits) of the HTTP ingress; off unless configured.
        self.framed: FramedIngress | None = None
        if config.gateway.framed is not None or config.gateway.framed_socket is not None:
            self.framed = FramedIngress(config.gateway, self.ingress.core, self.admission)
        self.reloader = ConfigReloader(
            config,
            self.functions,
            self.runtimes,
            known_runtimes=available_runtimes().keys(),
            on_applied=self._config_reloaded,
            code=self.cache.packages,
        )
        # New code (re-packed, image rewritten): new pools of it, the old ones finish.
        self.cache.packages.on_code_changed = self.functions.redeploy
        # cache.watch_packages: a save in a package directory redeploys it.
        self.codewatch = (
            CodeWatcher(lambda: self.config.functions, self.cache.packages.refresh)
            if config.cache.watch_packages
            else None
        )
        node_health = build_health(
            config,
            self.notifier,
            critical=self._critical_checks(),
            dispatcher=self.dispatcher,
            cache=self.cache,
            scrubber=self.cache.scrubber,
            ingress=self.ingress,
            runtimes=self.runtimes,
            fleet=self.fleet,
        )
        self.health: HealthSupervisor = node_health.supervisor
        self.lag_probe = node_health.lag_probe
        self.recovery = node_health.recovery
        self._attach_metric_sources()
        self._register_admin_commands()

    def _attach_metric_sources(self) -> None:
        """After every component exists: the collector reads them at scrape time."""
        fleet = self.fleet
        self.observability.attach(
            node_id=self.config.node.id,
            lag_probe=self.lag_probe,
            health=lambda: self.health.reports,
            cache_stats=self.cache.packages.stats,
            fleet=(lambda: fleet.describe()) if fleet is not None else None,
            runtimes=self.runtimes,
            admission=self.admission.snapshot,
        )

    # The admin command table (huselet.admin.commands) serves these.

    def _metrics_command(self, args: dict[str, Any]) -> dict[str, Any]:
        return self.observability.metrics_command(args)

    def _logs_command(self, args: dict[str, Any]) -> dict[str, Any]:
        return self.observability.logs_command(args)

    def _top_command(self, args: dict[str, Any]) -> dict[str, Any]:
        return self.observability.top_command(args)

    def _critical_checks(self) -> dict[str, Callable[[], str | None]]:
        """Components without which the node does not serve: the watchdog checks them."""
        return {
            "ingress": lambda: None if self.ingress.bound_address else "not listening",
            "dispatcher": lambda: None if self.dispatcher.running else "not running",
            "instance links": lambda: None if self.links.running else "not running",
        }

    def _config_reloaded(self, config: Config) -> None:
        self.config = config
        # [auth] applies live: limits re-tuned (buckets kept), keys file re-read below.
        self.admission.configure(config.auth)
        self.keys.retarget(config.auth.keys_file)
        if self.codewatch is not None:
            self.codewatch.sync()

    def _keys_changed(self, ring: KeyRing) -> None:
        self.admission.set_keys(ring)
        owners = {fn.name: fn.tenant for fn in self.config.functions if fn.tenant is not None}
        orphans = sorted(name for name, tenant in owners.items() if tenant not in ring.tenants)
        if orphans:
            # Nobody can invoke them (unless granted): most likely a typo.
            log.warning("functions owned by tenants the keys file lacks", functions=orphans)
        shared = sorted(
            fn.name
            for fn in self.config.functions
            if fn.tenant is not None and fn.runtime == "process"
        )
        if len({owners[name] for name in shared}) > 1:
            log.warning(
                "functions of several tenants run on the process runtime, which does not "
                "isolate them (same uid, host namespaces); use fork, bwrap or oci",
                functions=shared,
            )

    def _function_policy(self, name: str) -> FunctionSettings | None:
        pool = self.dispatcher.pools.get(name)
        return None if pool is None else pool.settings

    async def _reload(self, args: dict[str, Any]) -> dict[str, Any]:
        wait_s = args.get("wait_s", CODE_WAIT_S)
        if not isinstance(wait_s, int | float) or isinstance(wait_s, bool) or not wait_s >= 0:
            raise AdminCommandError("bad_request", "wait_s must be a number of seconds >= 0")
        self.notifier.notify(RELOADING="1", STATUS="reloading the configuration")
        try:
            outcome = await self.reloader.reload(min(wait_s, REFRESH_WAIT_S))
            await self.keys.reload()
            return outcome
        finally:
            self.notifier.notify(READY="1", STATUS=self._ready_status())

    def _ready_status(self) -> str:
        return (
            f"serving {len(self.dispatcher.pools)} functions on http://{self.ingress.bound_address}"
        )

    def _debug_block_loop(self, args: dict[str, Any]) -> dict[str, Any]:
        """Block the event loop synchronously: the fault the watchdog exists for."""
        if not self.config.admin.debug_commands:
            raise AdminCommandError(
                "forbidden", "debug commands are disabled; set admin.debug_commands = true"
            )
        ms = args.get("ms")
        if type(ms) is not int or not 0 < ms <= MAX_DEBUG_BLOCK_MS:
            raise AdminCommandError("bad_request", f"ms must be an integer 1..{MAX_DEBUG_BLOCK_MS}")
        log.warning("debug: blocking the event loop", ms=ms)
        time.sleep(ms / 1000)  # deliberately blocking: this *is* the fault
        return {"blocked_ms": ms}

    def _invocation_counts(self) -> dict[str, int]:
        return {
            name: pool.counters[PoolCounter.ACCEPTED]
            for name, pool in self.dispatcher.pools.items()
        }

    def _fleet_commands(self, on_placements: Callable[[str], None]) -> FleetCommands:
        from huselet.fleet import FleetCommands
        from huselet.fleet.commands import FunctionStore

        settings = self.config.scheduler
        assert settings is not None
        store_path = self.config.node.state_dir / "fleet-functions.json"
        return FleetCommands(
            self.config,
            self.functions,
            known_runtimes=self.runtimes,
            on_placements=on_placements,
            store=FunctionStore(store_path) if settings.persist_functions else None,
            prefetcher=lambda: getattr(self, "cache", None),
        )

    def _claim_link(self, function: str, instance_id: str, token: str) -> Any:
        return self.dispatcher.claim_link(function, instance_id, token)

    def _register_admin_commands(self) -> None:
        # One table says what each command is; huselet ctl derives from it too.
        for command in admin_commands.COMMANDS:
            serve = command.serve
            if serve is not None:
                self.admin.register(command.name, functools.partial(serve, self))

    def describe_keys(self) -> dict[str, Any]:
        return {"mode": self.admission.mode.value, **self.keys.describe()}

    def status(self) -> dict[str, Any]:
        return {
            "node": {
                "id": self.config.node.id,
                "version": huselet.__version__,
                "pid": os.getpid(),
                "uptime_s": round(trio.current_time() - self.started_at, 3),
                "http": str(self.ingress.bound_address) if self.ingress.bound_address else None,
                "http_connections": {
                    "open": self.ingress.open_connections,
                    "refused_per_source": self.ingress.sources.refused,
                    "replies_direct": self.ingress.replies_direct,
                    "held_client_gone": self.ingress.held_client_gone,
                },
                "framed": _framed_status(self.framed),
                "admin_socket": str(self.config.admin.socket),
                "config": str(self.config.source) if self.config.source else "(embedded default)",
                "runtimes": sorted(self.runtimes),
                "reload": self.reloader.describe(),
                "output": OUTPUT_STATS.describe(),  # instance output over the rate limit
            },
            **self.dispatcher.status(),
            "cache": self.cache.packages.stats(),
            "buffered_bodies": self.ingress.core.body_budget.describe(),
            "admission": self.admission.snapshot(),
        }

    async def _start_runtime(self, nursery: trio.Nursery, runtime: Any) -> None:
        """A runtime the host cannot serve (e.g. no isolation) refuses the start with its
        reason — one line, no traceback — instead of running with less."""
        try:
            await nursery.start(runtime.run)
        except RuntimeConfigError as exc:
            raise StartupError(str(exc)) from None

    async def run(self) -> None:
        node = self.config.node
        _prepare_dir(node.state_dir, 0o750, "node.state_dir")
        _prepare_dir(node.run_dir, 0o750, "node.run_dir")
        await self.recovery.sweep()  # before any component starts or binds
        stop_signals = (signal.SIGTERM, signal.SIGINT)
        root_logger = logging.getLogger("huselet")
        root_logger.addHandler(self.log_ring)
        try:
            await self._run(stop_signals)
        finally:
            root_logger.removeHandler(self.log_ring)
        log.info("huselet stopped")

    async def _run(self, stop_signals: tuple[signal.Signals, ...]) -> None:
        node = self.config.node
        with trio.open_signal_receiver(*stop_signals, signal.SIGHUP) as signals:
            async with trio.open_nursery() as nursery:
                for runtime in self.runtimes.values():
                    await self._start_runtime(nursery, runtime)
                await nursery.start(self.cache.run)
                if self.codewatch is not None:
                    await nursery.start(self.codewatch.run)
                await nursery.start(self.links.run, [fn.name for fn in self.config.functions])
                await nursery.start(self.dispatcher.run)
                if self.fleet is not None:
                    # Re-deploys what the scheduler had deployed before a restart, then dials.
                    await nursery.start(self.fleet.run)
                await nursery.start(self.admin.run)
                await nursery.start(self.keys.run)
                if self.metrics_server is not None:
                    await nursery.start(self.metrics_server.run)
                await nursery.start(self.ingress.run)
                if self.framed is not None:
                    await nursery.start(self.framed.run)
                ready = self._ready_status()
                log.info(
                    "huselet ready",
                    node=node.id,
                    http=str(self.ingress.bound_address),
                    admin=str(self.config.admin.socket),
                    functions=[fn.name for fn in self.config.functions],
                    version=huselet.__version__,
                    metrics=str(self.metrics_server.bound_address)
                    if self.metrics_server is not None
                    else None,
                )
                self.notifier.ready(ready)
                # Only a ready daemon pets the watchdog (systemd expects READY=1 first).
                await nursery.start(self.health.run)
                async for signum in signals:
                    if signum == signal.SIGHUP:
                        # Reload in its own task: the signal loop stays free for SIGTERM.
                        nursery.start_soon(self._reload_on_signal)
                        continue
                    log.info("shutdown requested", signal=signal.Signals(signum).name)
                    break
                await self.shutdown()
                nursery.cancel_scope.cancel()

    async def _reload_on_signal(self) -> None:
        try:
            await self._reload({})
        except HuseletError:
            pass  # refused: logged by the reloader; the running config stays
        except Exception:
            # Nothing in a file an operator can write may end the daemon.
            log.exception("reload failed unexpectedly; the running configuration stays")

    async def shutdown(self) -> None:
        grace_s = self.config.node.drain_grace_ms / 1000
        self.notifier.stopping(f"draining (grace {grace_s:g}s)")
        await self.dispatcher.drain(grace_s)
        # Let the ingress write the replies of requests that just completed.
        with trio.move_on_after(1.0):
            await self.ingress.active_requests.wait_zero()


def _framed_status(framed: FramedIngress | None) -> dict[str, Any] | None:
    if framed is None:
        return None
    return {
        "address": str(framed.bound_address) if framed.bound_address else None,
        "socket": str(framed.settings.framed_socket) if framed.settings.framed_socket else None,
        "open_connections": framed.open_connections,
        "refused_per_source": framed.sources.refused,
        **framed.counters,
    }


def _read_token(path: Path | None) -> str | None:
    if path is None:
        return None
    try:
        # Bounded, never blocking on a FIFO, refused when empty (as --check does).
        return read_token(path, "gateway.auth_token_file")
    except ConfigError as exc:
        raise StartupError(f"cannot use {exc}") from None
