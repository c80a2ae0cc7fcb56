"""The settings classes: the frozen, typed result of validating the config file.

Plain data only; the parsing lives in :mod:`huselet.config.loader` and the
per-section modules, so code that only reads settings imports nothing of it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from huselet.config.auth import AuthSettings, RateLimit
from huselet.config.health import HealthSettings
from huselet.config.observe import LogSettings, MetricsSettings
from huselet.config.table import TcpAddress
from huselet.config.trust import DeployPolicy, LinkTlsSettings
from protocol.link import EntryKind

# The working directory of workers whose code comes only from an image: nothing
# of the function lives on the host's file system, so no directory is implied.
IMAGE_ONLY_CWD = Path("/")


@dataclass(frozen=True)
class NodeSettings:
    """``[node]``: this node's id, its state and runtime directories, logging, drain grace."""

    id: str
    state_dir: Path
    run_dir: Path
    log_level: str = "info"
    drain_grace_ms: int = 10_000


@dataclass(frozen=True)
class GatewaySettings:
    """``[gateway]``: the ingress listeners, body and queue bounds, the bearer token."""

    http: TcpAddress
    max_body_bytes: int = 6 * 1024 * 1024
    queue_per_function: int = 1000
    max_connections: int = 1024
    # Of those, at most this many from one source address (0: no per-source bound).
    max_connections_per_source: int = 256
    idle_timeout_ms: int = 30_000  # keep-alive connection with no request
    read_timeout_ms: int = 10_000  # headers + body of one request
    auth_token_file: Path | None = None
    allow_unauthenticated: bool = False
    # The framed ingress (protocol/FRAMED.md): off unless an address or socket is set.
    framed: TcpAddress | None = None
    framed_socket: Path | None = None
    framed_max_inflight: int = 256  # unanswered calls per framed connection
    # Node-wide bound on request bodies held in memory (reading, queued, in
    # flight); past it new bodies get 503 at once. Default: default_buffered_mb().
    max_buffered_mb: int = 1024


@dataclass(frozen=True)
class AdminSettings:
    """``[admin]``: the admin socket, who may use it, and the debug commands."""

    socket: Path
    # Who may talk to the admin socket besides root and the daemon's own uid.
    allowed_uids: tuple[int, ...] = ()
    # Fault-injection commands (``debug_block_loop``) for tests; never in production.
    debug_commands: bool = False


@dataclass(frozen=True)
class CacheSettings:
    """``[cache]``: the package image cache (see ``huselet/code/``)."""

    disk_budget_mb: int = 4096  # installed images under state_dir/cache/images
    memory_budget_mb: int = 1024  # mapped images not in use by any instance
    max_image_mb: int = 1024  # refuse larger downloads
    # Where functions that give only ``digest`` (and prefetch hints without an
    # origin) fetch from: a directory, file:// or http(s):// URL.
    default_origin: str | None = None
    fetch_timeout_s: int = 120  # per attempt
    fetch_attempts: int = 3
    # Directory packages are packed into images on load, so development runs
    # the same import path as production; false serves them as plain directories.
    pack_directories: bool = True
    publish_dir: Path | None = None  # watched; images/directories dropped here are installed
    scrub_interval_s: int = 3600  # seconds between re-verification passes; 0: never
    scrub_mb_per_s: int = 64  # pace of a pass, so scrubbing never hogs the disk
    prefetch_concurrency: int = 2
    prefetch_queue: int = 256
    predict: bool = True  # prefetch from the node's own invocation history
    predict_window_s: int = 3600  # "invoked recently" means within this
    # requirements.txt of packed directories (huselet/code/dependencies.py): wheels
    # only unless sdists are allowed (building one runs its setup code).
    allow_sdist: bool = False
    pip_timeout_s: int = 600
    # pips run at once (packing other trees goes on meanwhile); images build one at a time.
    pip_concurrency: int = 4
    # Re-pack (and redeploy) a package directory when a file in it is saved.
    watch_packages: bool = False


@dataclass(frozen=True)
class LayerSettings:
    """One ``functions[].layers`` entry: a shared dependency image after the function's code.

    ``image`` (a file; ``digest`` then pins its content) or ``digest`` (+
    ``origin``, default ``cache.default_origin``: fetched like any image).
    """

    image: Path | None = None
    digest: str | None = None
    origin: str | None = None


@dataclass(frozen=True)
class FunctionSettings:
    """One ``[[functions]]`` entry: the code, its runtime, limits and scaling."""

    name: str
    # The worker's working directory; for ``package = "dir"`` also the source tree.
    package: Path
    handler: str
    runtime: str = "process"
    memory_mb: int = 256
    timeout_ms: int = 30_000
    max_instances: int = 8
    min_instances: int = 0
    idle_timeout_ms: int = 60_000  # keep-alive of an idle instance
    start_timeout_ms: int = 10_000
    # "reuse": keep-alive instances serve request after request; "single": a
    # fresh instance per request, torn down after it (strongest isolation).
    instance_mode: str = "reuse"
    max_queue: int | None = None  # None: gateway.queue_per_function
    env: Mapping[str, str] = field(default_factory=dict)
    image: Path | None = None  # ``image = "x.hlimg"``: a package image file
    digest: str | None = None  # ``digest = "<sha256>"``: fetched from ``origin``
    origin: str | None = None  # URL or absolute directory; None: cache.default_origin
    # Safe to run twice: a request whose instance died is retried once on a
    # fresh instance instead of answered with 502. Never assumed.
    idempotent: bool = False
    # How the worker calls ``handler`` (for apps: ``app``): ``events = "http"``
    # and ``kind = "wsgi" | "asgi"`` take HTTP requests (ANY /v1/invoke/NAME/...).
    kind: EntryKind = EntryKind.HANDLER
    # The tenant owning the function (keys file); None: only tenants granted it.
    tenant: str | None = None
    rate: RateLimit | None = None  # rate_per_s / burst at admission, all callers together
    max_concurrent: int | None = None  # requests admitted at once, all callers together
    # Shared dependency images on the import path after the function's own code.
    layers: tuple[LayerSettings, ...] = ()

    @property
    def code_source(self) -> str:
        """Which of ``package``, ``image`` or ``digest`` names the code."""
        if self.image is not None:
            return "image"
        if self.digest is not None:
            return "digest"
        return "package"

    @property
    def handler_module(self) -> str:
        return self.handler.split(":", 1)[0]

    @property
    def handler_attr(self) -> str:
        return self.handler.split(":", 1)[1]


@dataclass(frozen=True)
class SchedulerLinkSettings:
    """``[scheduler]``: the link to the central scheduler; absent, the node is standalone.

    Heartbeat interval and lease TTL are the scheduler's to announce (WELCOME);
    the node only decides how many missed heartbeats end a link.
    """

    addresses: tuple[TcpAddress, ...]
    node_id: str  # identity in the fleet; default node.id
    memory_mb: int  # capacity offered for placements; default the host's RAM
    labels: Mapping[str, str] = field(default_factory=dict)
    connect_timeout_ms: int = 2_000
    handshake_timeout_ms: int = 10_000
    send_timeout_ms: int = 5_000  # a scheduler that does not read for this long is dropped
    batch_delay_ms: int = 50  # bounded delay before state changes leave as one frame
    silent_heartbeats: int = 3
    backoff_base_ms: int = 100
    # Also how long a node may take to notice a restarted scheduler: after an
    # outage of any length it redials within this (see the README's [scheduler]).
    backoff_max_ms: int = 5_000
    persist_functions: bool = True  # deployed functions survive a daemon restart
    policy: DeployPolicy = field(default_factory=DeployPolicy)
    tls: LinkTlsSettings | None = None  # None: plaintext (loopback only, unless insecure)
    insecure: bool = False  # allow plaintext to non-loopback scheduler addresses
    epoch_file: Path | None = None  # highest accepted epoch (state_dir/fleet-epoch)


@dataclass(frozen=True)
class Config:
    """The whole validated configuration: one settings object per TOML section."""

    node: NodeSettings
    gateway: GatewaySettings
    admin: AdminSettings
    functions: tuple[FunctionSettings, ...]
    # Per-runtime tables ([runtimes.NAME]); each plugin validates its own.
    runtimes: Mapping[str, Mapping[str, Any]]
    source: Path | None  # None: the embedded default
    cache: CacheSettings = field(default_factory=CacheSettings)
    scheduler: SchedulerLinkSettings | None = None  # None: standalone
    health: HealthSettings = field(default_factory=HealthSettings)
    metrics: MetricsSettings = field(default_factory=MetricsSettings)
    log: LogSettings = field(default_factory=LogSettings)
    auth: AuthSettings = field(default_factory=AuthSettings)

    def function(self, name: str) -> FunctionSettings | None:
        for fn in self.functions:
            if fn.name == name:
                return fn
        return None
