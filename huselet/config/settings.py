"""Configuration: one TOML file validated at start into frozen, typed settings.

Every problem names its key path and what was wrong, e.g.::

    config error: functions[0].timeout_ms: expected a positive integer, got "5s"

Unknown keys are errors (a typo must not silently fall back to a default).
Relative paths resolve against the config file's directory; the embedded
default (``huselet/default.toml``) resolves against the ``huselet`` package, so
``huselet run`` alone serves the bundled ``hello`` example.
"""

from __future__ import annotations

import os
import re
import socket
import stat
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from huselet.config.auth import TENANT_NAME, AuthSettings, RateLimit, parse_auth, parse_rate
from huselet.config.health import HealthSettings, parse_health
from huselet.config.limits import check_structure, parse_toml, read_token
from huselet.config.observe import LogSettings, MetricsSettings, parse_log, parse_metrics
from huselet.config.table import ConfigTable, TcpAddress, describe
from huselet.config.trust import (
    DeployPolicy,
    LinkTlsSettings,
    loopback_host,
    parse_link_tls,
    parse_policy,
)
from huselet.errors import ConfigError
from protocol.link import EntryKind

# A sun_path holds 108 bytes including the terminating NUL.
MAX_UNIX_PATH = 107
FUNCTION_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
HANDLER = re.compile(
    r"^([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*):([A-Za-z_][A-Za-z0-9_]*)$"
)
DIGEST = re.compile(r"^[0-9a-f]{64}$")
LOG_LEVELS = ("debug", "info", "warning", "error")
EMBEDDED_DEFAULT = Path(__file__).resolve().parents[1] / "default.toml"
MAX_CONFIG_BYTES = 4 << 20  # thousands of functions fit in far less


@dataclass(frozen=True)
class NodeSettings:
    id: str
    state_dir: Path
    run_dir: Path
    log_level: str = "info"
    drain_grace_ms: int = 10_000


@dataclass(frozen=True)
class GatewaySettings:
    http: TcpAddress
    max_body_bytes: int = 6 * 1024 * 1024
    queue_per_function: int = 1000
    max_connections: int = 1024
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
    socket: Path
    # Who may talk to the admin socket besides root and the daemon's own uid.
    allowed_uids: tuple[int, ...] = ()
    # Fault-injection commands (``debug_block_loop``) for tests; never in production.
    debug_commands: bool = False


@dataclass(frozen=True)
class CacheSettings:
    """``[cache]``: the package image cache (see ``huselet/packages.py``)."""

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


CODE_SOURCES = ("package", "image", "digest")
# The working directory of workers whose code comes only from an image: nothing
# of the function lives on the host's file system, so no directory is implied.
IMAGE_ONLY_CWD = Path("/")


@dataclass(frozen=True)
class FunctionSettings:
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
    backoff_max_ms: int = 30_000
    persist_functions: bool = True  # deployed functions survive a daemon restart
    policy: DeployPolicy = field(default_factory=DeployPolicy)
    tls: LinkTlsSettings | None = None  # None: plaintext (loopback only, unless insecure)
    insecure: bool = False  # allow plaintext to non-loopback scheduler addresses
    epoch_file: Path | None = None  # highest accepted epoch (state_dir/fleet-epoch)


@dataclass(frozen=True)
class Config:
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


# --- loading ----------------------------------------------------------------


def load_config(path: Path | None, *, known_runtimes: Iterable[str] = ("process",)) -> Config:
    """Read and validate ``path`` (or the embedded default when None)."""
    source = EMBEDDED_DEFAULT if path is None else Path(path)
    try:
        if not stat.S_ISREG(source.stat().st_mode):
            # A FIFO would block the reader forever; a device never ends.
            raise ConfigError("", f"{source} is not a regular file")
        with source.open("rb") as f:
            # Bounded: a reload must not swallow a runaway file (or /dev/zero).
            raw_bytes = f.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise ConfigError("", f"cannot read {source}: {exc.strerror}") from None
    if len(raw_bytes) > MAX_CONFIG_BYTES:
        raise ConfigError("", f"{source} is larger than {MAX_CONFIG_BYTES // (1 << 20)} MiB")
    try:
        text = raw_bytes.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError("", f"{source} is not UTF-8") from None
    # Depth, 64-bit integers, finite floats: bounded before any key is read.
    raw = parse_toml(text, source)
    base = source.resolve().parent
    try:
        return parse_config(
            raw,
            base_dir=base,
            embedded=path is None,
            known_runtimes=frozenset(known_runtimes),
            source=None if path is None else source.resolve(),
        )
    except OSError as exc:
        # Validation stats paths the file names; a file system error there is the
        # file's problem to report, not a traceback.
        raise ConfigError("", f"{source}: cannot check a path it names: {exc}") from None


def parse_config(
    raw: Mapping[str, Any],
    *,
    base_dir: Path,
    embedded: bool = False,
    known_runtimes: frozenset[str] = frozenset({"process"}),
    source: Path | None = None,
) -> Config:
    t = ConfigTable(raw, "", base_dir)
    node_t = t.table("node")
    if embedded and os.geteuid() != 0:
        # A non-root user running the bundled default must not need /var or /run.
        state_default, run_default = _per_user_dirs()
    else:
        state_default, run_default = Path("/var/lib/huselet"), Path("/run/huselet")
    node = NodeSettings(
        id=node_t.string("id", default=socket.gethostname(), pattern=re.compile(r"^\S{1,253}$")),
        state_dir=node_t.path("state_dir", default=state_default, force_default=embedded),
        run_dir=node_t.path("run_dir", default=run_default, force_default=embedded),
        log_level=node_t.choice("log_level", LOG_LEVELS, default="info"),
        drain_grace_ms=node_t.positive_int("drain_grace_ms", default=10_000),
    )
    node_t.finish()

    gw_t = t.table("gateway")
    max_body_bytes = gw_t.positive_int("max_body_bytes", default=6 * 1024 * 1024)
    gateway = GatewaySettings(
        http=gw_t.tcp_address("http", default="127.0.0.1:8470"),
        max_body_bytes=max_body_bytes,
        queue_per_function=gw_t.positive_int("queue_per_function", default=1000),
        max_connections=gw_t.positive_int("max_connections", default=1024),
        idle_timeout_ms=gw_t.positive_int("idle_timeout_ms", default=30_000),
        read_timeout_ms=gw_t.positive_int("read_timeout_ms", default=10_000),
        auth_token_file=gw_t.optional_path("auth_token_file"),
        allow_unauthenticated=gw_t.boolean("allow_unauthenticated", default=False),
        framed=gw_t.optional_tcp_address("framed"),
        framed_socket=gw_t.optional_path("framed_socket"),
        framed_max_inflight=gw_t.positive_int("framed_max_inflight", default=256, maximum=65536),
        max_buffered_mb=gw_t.positive_int(
            "max_buffered_mb",
            default=default_buffered_mb(max_body_bytes),
            minimum=-(-max_body_bytes // (1 << 20)),  # room for one largest body
            maximum=_host_memory_mb(),
            maximum_help="this host's memory",
        ),
    )
    gw_t.finish()
    auth = parse_auth(t.table("auth"))
    if auth.keys_file is not None and gateway.auth_token_file is not None:
        raise ConfigError(
            "auth.keys_file",
            "conflicts with gateway.auth_token_file: use signed requests (keys file) or the "
            "single-tenant bearer token, not both",
        )
    if auth.keys_file is not None and (
        gateway.framed is not None or gateway.framed_socket is not None
    ):
        # Safe by default: the framed ingress checks only the bearer token so far,
        # so with tenants it would be a way around their signatures and limits.
        raise ConfigError(
            "auth.keys_file",
            "the framed ingress (gateway.framed, gateway.framed_socket) does not take signed "
            "requests yet; turn it off on a node with tenants",
        )
    for key, address in (("http", gateway.http), ("framed", gateway.framed)):
        if (
            address is not None
            and not address.is_loopback
            and gateway.auth_token_file is None
            and auth.keys_file is None
            and not gateway.allow_unauthenticated
        ):
            raise ConfigError(
                f"gateway.{key}",
                f"{address} is reachable from other hosts but no gateway.auth_token_file is "
                "set; set one (or auth.keys_file), or gateway.allow_unauthenticated = true if a "
                "trusted proxy guards it",
            )
    if gateway.framed_socket is not None:
        _check_unix_path("gateway.framed_socket", gateway.framed_socket)
    if gateway.auth_token_file is not None:
        # Read now, as the daemon will: an empty or unreadable token fails --check too.
        read_token(gateway.auth_token_file, "gateway.auth_token_file")

    admin_t = t.table("admin")
    admin = AdminSettings(
        socket=admin_t.path("socket", default=node.run_dir / "admin.sock", force_default=embedded),
        allowed_uids=tuple(admin_t.int_list("allowed_uids", default=[])),
        debug_commands=admin_t.boolean("debug_commands", default=False),
    )
    admin_t.finish()
    _check_unix_path("admin.socket", admin.socket)
    # The longest socket the daemon creates under run_dir is fn/<63-char name>.sock.
    _check_unix_path("node.run_dir", node.run_dir / "fn" / ("x" * 63 + ".sock"))

    cache = _parse_cache(t.table("cache"), node)
    scheduler = _parse_scheduler(t.table("scheduler"), node) if "scheduler" in raw else None
    health = parse_health(t.table("health"))
    metrics, log_settings = parse_metrics(t.table("metrics")), parse_log(t.table("log"))

    runtimes_t = t.table("runtimes")
    runtimes: dict[str, Mapping[str, Any]] = {}
    for name in runtimes_t.key_names():
        if name not in known_runtimes:
            raise ConfigError(
                f"runtimes.{name}",
                f"unknown runtime; known: {', '.join(sorted(known_runtimes))}",
            )
        runtimes[name] = dict(runtimes_t.table(name).raw)
    functions = tuple(
        _parse_function(ft, gateway, known_runtimes, cache) for ft in t.table_list("functions")
    )
    names = [f.name for f in functions]
    for i, name in enumerate(names):
        if name in names[:i]:
            raise ConfigError(f"functions[{i}].name", f"duplicate function name {name!r}")
    t.finish()
    return Config(
        node=node,
        gateway=gateway,
        admin=admin,
        functions=functions,
        runtimes=runtimes,
        source=source,
        cache=cache,
        scheduler=scheduler,
        health=health,
        metrics=metrics,
        log=log_settings,
        auth=auth,
    )


def _parse_function(
    ft: ConfigTable,
    gateway: GatewaySettings,
    known_runtimes: frozenset[str],
    cache: CacheSettings | None = None,
) -> FunctionSettings:
    name = ft.string(
        "name", pattern=FUNCTION_NAME, pattern_help="lowercase letters, digits, - and _, at most 63"
    )
    handler, spec_key, kind = _parse_entry(ft)
    module = handler.split(":", 1)[0]
    package, image, digest, origin = _parse_code(
        ft, module, cache or CacheSettings(), spec_key=spec_key
    )
    runtime = ft.choice("runtime", tuple(sorted(known_runtimes)), default="process")
    max_instances = ft.positive_int("max_instances", default=8)
    min_instances = ft.non_negative_int("min_instances", default=0)
    if min_instances > max_instances:
        raise ConfigError(
            ft.key("min_instances"), f"{min_instances} exceeds max_instances {max_instances}"
        )
    env_t = ft.table("env")
    env = {k: env_t.string(k) for k in env_t.key_names()}
    fn = FunctionSettings(
        name=name,
        package=package,
        handler=handler,
        runtime=runtime,
        memory_mb=ft.positive_int(
            "memory_mb",
            default=256,
            minimum=16,
            maximum=_host_memory_mb(),
            maximum_help="this host's memory",
        ),
        timeout_ms=ft.positive_int("timeout_ms", default=30_000),
        max_instances=max_instances,
        min_instances=min_instances,
        idle_timeout_ms=ft.positive_int("idle_timeout_ms", default=60_000),
        start_timeout_ms=ft.positive_int("start_timeout_ms", default=10_000),
        instance_mode=ft.choice("instance_mode", ("reuse", "single"), default="reuse"),
        max_queue=ft.positive_int("max_queue", default=gateway.queue_per_function),
        env=env,
        image=image,
        digest=digest,
        origin=origin,
        idempotent=ft.boolean("idempotent", default=False),
        kind=kind,
        tenant=(
            ft.string("tenant", pattern=TENANT_NAME, pattern_help="a tenant name")
            if ft.optional("tenant") is not None
            else None
        ),
        rate=parse_rate(ft),
        max_concurrent=(
            ft.positive_int("max_concurrent") if ft.optional("max_concurrent") is not None else None
        ),
    )
    ft.finish()
    return fn


APP_KINDS = (EntryKind.WSGI.value, EntryKind.ASGI.value)
EVENT_FORMATS = ("default", "http")


def _parse_entry(ft: ConfigTable) -> tuple[str, str, EntryKind]:
    """``handler`` [+ ``events``], or ``app`` + ``kind``: (spec, its key, kind)."""
    if "app" in ft.raw:
        if "handler" in ft.raw:
            raise ConfigError(ft.key("handler"), "conflicts with app; set exactly one")
        if "events" in ft.raw:
            raise ConfigError(
                ft.key("events"), "only for handler functions; an app always gets HTTP requests"
            )
        app = ft.string("app", pattern=HANDLER, pattern_help='"module:attribute"')
        if "kind" not in ft.raw:
            raise ConfigError(ft.key("kind"), 'required with app: "wsgi" or "asgi"')
        return app, "app", EntryKind(ft.choice("kind", APP_KINDS, default="wsgi"))
    if "kind" in ft.raw:
        kind = ft.choice("kind", (EntryKind.HANDLER.value, *APP_KINDS), default="handler")
        if kind != EntryKind.HANDLER.value:
            raise ConfigError(ft.key("kind"), f'kind = "{kind}" needs app = "module:attribute"')
    handler = ft.string("handler", pattern=HANDLER, pattern_help='"module:function"')
    events = ft.choice("events", EVENT_FORMATS, default="default")
    return handler, "handler", EntryKind.HTTP if events == "http" else EntryKind.HANDLER


def _parse_code(
    ft: ConfigTable, module: str, cache: CacheSettings, *, spec_key: str = "handler"
) -> tuple[Path, Path | None, str | None, str | None]:
    """Exactly one of ``package``, ``image`` or ``digest`` (+ ``origin``) names the code.

    Returns (working directory, image, digest, origin).
    """
    given = [key for key in CODE_SOURCES if key in ft.raw]
    if not given:
        raise ConfigError(
            ft.key("package"),
            "required key is missing (name the code with package, image, or digest + origin)",
        )
    if len(given) > 1:
        raise ConfigError(
            ft.key(given[1]),
            f"conflicts with {given[0]}; set exactly one of package, image or digest",
        )
    if "origin" in ft.raw and given[0] != "digest":
        raise ConfigError(ft.key("origin"), "only allowed together with digest")
    rel = Path(*module.split("."))
    if given[0] == "package":
        package = ft.path("package")
        try:
            if not package.is_dir():
                raise ConfigError(ft.key("package"), f"package directory {package} does not exist")
            found = (package / rel).with_suffix(".py").is_file() or (
                package / rel / "__init__.py"
            ).is_file()
            resolved = package.resolve()
        except OSError as exc:  # ENAMETOOLONG from a long handler module, EACCES…
            raise ConfigError(
                ft.key(spec_key), f"cannot look for module {module!r}: {exc}"
            ) from None
        if not found:
            raise ConfigError(ft.key(spec_key), f"module {module!r} not found in package {package}")
        return resolved, None, None, None
    if given[0] == "image":
        image = ft.path("image").resolve()
        _check_image(ft, image, module, rel, spec_key)
        return IMAGE_ONLY_CWD, image, None, None
    digest = ft.string("digest", pattern=DIGEST, pattern_help="64 lowercase hex digits (sha256)")
    if "origin" in ft.raw:
        origin = _origin_url(ft, "origin")
    elif cache.default_origin is not None:
        origin = None
    else:
        raise ConfigError(
            ft.key("origin"), "required with digest when cache.default_origin is not set"
        )
    return IMAGE_ONLY_CWD, None, digest, origin


def _check_image(ft: ConfigTable, image: Path, module: str, rel: Path, spec_key: str) -> None:
    """Read the image's header and index (not its data: the store verifies that).

    With ``pread``, never a mapping, and never blocking: a FIFO is refused at
    once, a file truncated meanwhile is an error rather than a SIGBUS.
    """
    from cache.errors import CacheError
    from cache.reader import inspect_image

    try:
        index = inspect_image(image, verify=False)
    except FileNotFoundError:
        raise ConfigError(ft.key("image"), f"image {image} does not exist") from None
    except OSError as exc:
        raise ConfigError(ft.key("image"), f"cannot read image {image}: {exc.strerror}") from None
    except CacheError as exc:
        raise ConfigError(ft.key("image"), f"{image} is not a usable image: {exc}") from None
    found = index.is_file(f"{rel.as_posix()}.py") or index.is_file(f"{rel.as_posix()}/__init__.py")
    if not found:
        raise ConfigError(ft.key(spec_key), f"module {module!r} not found in image {image}")


def _origin_url(t: ConfigTable, key: str) -> str:
    """A directory (resolved against the config file) or a file:// / http(s):// URL."""
    value = t.string(key)
    try:
        parts = urlsplit(value)
        scheme, hostname = parts.scheme, parts.hostname
    except ValueError as exc:  # "http://[" and friends
        raise ConfigError(t.key(key), f"invalid URL {describe(value)}: {exc}") from None
    if scheme in ("http", "https", "file"):
        if scheme != "file" and not hostname:
            raise ConfigError(t.key(key), f"{describe(value)} has no host")
        return value
    if scheme:
        raise ConfigError(
            t.key(key),
            f"unsupported scheme {scheme!r}; use a directory, file://, http:// or https://",
        )
    return str(t.path(key))


def _parse_cache(ct: ConfigTable, node: NodeSettings) -> CacheSettings:
    disk_budget_mb = ct.positive_int("disk_budget_mb", default=4096)
    max_image_mb = ct.positive_int("max_image_mb", default=min(1024, disk_budget_mb))
    if max_image_mb > disk_budget_mb:
        raise ConfigError(
            ct.key("max_image_mb"), f"{max_image_mb} exceeds disk_budget_mb {disk_budget_mb}"
        )
    publish_dir = ct.optional_path("publish_dir")
    if publish_dir is not None:
        publish_dir = publish_dir.resolve()
        cache_dir = (node.state_dir / "cache").resolve()
        if publish_dir == cache_dir or cache_dir in publish_dir.parents:
            raise ConfigError(
                ct.key("publish_dir"), f"must not be inside the cache's own directory {cache_dir}"
            )
        # Watched recursively and every entry published: it must be a directory of
        # its own, never / or one holding the daemon's state or sockets.
        for name, own in (("node.state_dir", node.state_dir), ("node.run_dir", node.run_dir)):
            own = own.resolve()
            if publish_dir == own or publish_dir in own.parents:
                raise ConfigError(
                    ct.key("publish_dir"),
                    f"{publish_dir} contains {name} {own}; use a directory of its own",
                )
        if publish_dir == Path(publish_dir.anchor) or publish_dir in _SYSTEM_DIRS:
            raise ConfigError(
                ct.key("publish_dir"), f"{publish_dir} is a system directory; use one of its own"
            )
    settings = CacheSettings(
        disk_budget_mb=disk_budget_mb,
        memory_budget_mb=ct.positive_int("memory_budget_mb", default=1024),
        max_image_mb=max_image_mb,
        default_origin=_origin_url(ct, "default_origin") if "default_origin" in ct.raw else None,
        fetch_timeout_s=ct.positive_int("fetch_timeout_s", default=120),
        fetch_attempts=ct.positive_int("fetch_attempts", default=3),
        pack_directories=ct.boolean("pack_directories", default=True),
        publish_dir=publish_dir,
        scrub_interval_s=ct.non_negative_int("scrub_interval_s", default=3600),
        scrub_mb_per_s=ct.positive_int("scrub_mb_per_s", default=64),
        prefetch_concurrency=ct.positive_int("prefetch_concurrency", default=2),
        prefetch_queue=ct.positive_int("prefetch_queue", default=256),
        predict=ct.boolean("predict", default=True),
        predict_window_s=ct.positive_int("predict_window_s", default=3600),
    )
    ct.finish()
    return settings


def _parse_scheduler(st: ConfigTable, node: NodeSettings) -> SchedulerLinkSettings:
    addresses = st.tcp_address_list("addresses")
    if not addresses:
        raise ConfigError(st.key("addresses"), "at least one scheduler address is required")
    labels_t = st.table("labels")
    base_ms = st.positive_int("backoff_base_ms", default=100)
    max_ms = st.positive_int("backoff_max_ms", default=30_000)
    if max_ms < base_ms:
        raise ConfigError(st.key("backoff_max_ms"), f"{max_ms} is below backoff_base_ms {base_ms}")
    settings = SchedulerLinkSettings(
        addresses=tuple(addresses),
        # The protocol limits ids to 128 characters.
        node_id=st.string("node_id", default=node.id, pattern=re.compile(r"^\S{1,128}$")),
        memory_mb=st.positive_int("memory_mb", default=_host_memory_mb()),
        labels={k: labels_t.string(k) for k in labels_t.key_names()},
        connect_timeout_ms=st.positive_int("connect_timeout_ms", default=2_000),
        handshake_timeout_ms=st.positive_int("handshake_timeout_ms", default=10_000),
        send_timeout_ms=st.positive_int("send_timeout_ms", default=5_000),
        batch_delay_ms=st.non_negative_int("batch_delay_ms", default=50),
        silent_heartbeats=st.positive_int("silent_heartbeats", default=3),
        backoff_base_ms=base_ms,
        backoff_max_ms=max_ms,
        persist_functions=st.boolean("persist_functions", default=True),
        policy=parse_policy(st),
        tls=parse_link_tls(st),
        insecure=st.boolean("insecure", default=False),
        epoch_file=node.state_dir / "fleet-epoch",
    )
    if settings.tls is None and not settings.insecure:
        for i, address in enumerate(settings.addresses):
            if not loopback_host(address.host):
                raise ConfigError(
                    f"{st.key('addresses')}[{i}]",
                    f"{address} is not loopback: set tls_ca/tls_cert/tls_key "
                    "(or insecure = true to allow plaintext)",
                )
    st.finish()
    return settings


def default_buffered_mb(max_body_bytes: int) -> int:
    """``gateway.max_buffered_mb`` by default: an eighth of RAM, 64 MiB..2 GiB."""
    body_mb = -(-max_body_bytes // (1 << 20))
    return max(body_mb, min(2048, max(64, _host_memory_mb() // 8)))


def _host_memory_mb() -> int:
    try:
        return max(1, os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // (1 << 20))
    except (ValueError, OSError):
        return 1024


def parse_function_spec(
    raw: Mapping[str, Any], config: Config, *, known_runtimes: Iterable[str], where: str
) -> FunctionSettings:
    """One ``[[functions]]`` table that arrived at runtime (a scheduler's deploy command).

    Validated exactly like the config file's; errors name ``where`` as the key path.
    Relative paths resolve against ``node.state_dir``.
    """
    check_structure(raw, where)
    t = ConfigTable(raw, where, config.node.state_dir)
    return _parse_function(t, config.gateway, frozenset(known_runtimes), config.cache)


def _per_user_dirs() -> tuple[Path, Path]:
    home = Path.home()
    state = Path(os.environ.get("XDG_STATE_HOME") or home / ".local" / "state") / "huselet"
    runtime_dir = os.environ.get("XDG_RUNTIME_DIR")
    run = Path(runtime_dir) / "huselet" if runtime_dir else Path(f"/tmp/huselet-{os.geteuid()}")
    return state, run


def _check_unix_path(key: str, path: Path) -> None:
    if len(os.fsencode(path)) > MAX_UNIX_PATH:
        raise ConfigError(
            key,
            f"{path} is too long for a Unix socket path ({len(os.fsencode(path))} bytes, "
            f"at most {MAX_UNIX_PATH}); choose a shorter directory",
        )


# Publishing one of these would watch (and pack) half the host.
_SYSTEM_DIRS = frozenset(
    Path(p)
    for p in (
        *("/bin", "/boot", "/dev", "/etc", "/home", "/lib", "/lib64", "/opt", "/proc"),
        *("/root", "/run", "/sbin", "/srv", "/sys", "/tmp", "/usr", "/var", "/var/lib"),
        "/var/tmp",
    )
)
