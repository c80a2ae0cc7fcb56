"""Loading the config file: reading it safely, then ``[node]``, ``[gateway]``, ``[admin]``.

The other sections are parsed by their own modules; this one ties them into a
:class:`~huselet.config.settings.Config`.

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
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from huselet.config.auth import parse_auth
from huselet.config.cache import parse_cache
from huselet.config.functions import parse_function
from huselet.config.health import parse_health
from huselet.config.host import check_unix_path, host_memory_mb, per_user_dirs
from huselet.config.limits import parse_toml, read_small_file, read_token
from huselet.config.observe import parse_log, parse_metrics
from huselet.config.scheduler import parse_scheduler
from huselet.config.settings import AdminSettings, Config, GatewaySettings, NodeSettings
from huselet.config.table import ConfigTable
from huselet.errors import ConfigError

LOG_LEVELS = ("debug", "info", "warning", "error")
EMBEDDED_DEFAULT = Path(__file__).resolve().parents[1] / "default.toml"
MAX_CONFIG_BYTES = 4 << 20  # thousands of functions fit in far less


def load_config(path: Path | None, *, known_runtimes: Iterable[str] = ("process",)) -> Config:
    """Read and validate ``path`` (or the embedded default when None)."""
    source = EMBEDDED_DEFAULT if path is None else Path(path)
    # Bounded: a reload must not swallow a runaway file (or /dev/zero, or a FIFO).
    text = read_small_file(source, MAX_CONFIG_BYTES, "", str(source))[0]
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
        state_default, run_default = per_user_dirs()
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
        max_connections_per_source=gw_t.non_negative_int("max_connections_per_source", default=256),
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
            maximum=host_memory_mb(),
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
        check_unix_path("gateway.framed_socket", gateway.framed_socket)
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
    check_unix_path("admin.socket", admin.socket)
    # The longest socket the daemon creates under run_dir is fn/<63-char name>.sock.
    check_unix_path("node.run_dir", node.run_dir / "fn" / ("x" * 63 + ".sock"))

    cache = parse_cache(t.table("cache"), node)
    scheduler = parse_scheduler(t.table("scheduler"), node) if "scheduler" in raw else None
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
        parse_function(ft, gateway, known_runtimes, cache) for ft in t.table_list("functions")
    )
    names = [f.name for f in functions]
    for i, name in enumerate(names):
        if name in names[:i]:
            raise ConfigError(f"functions[{i}].name", f"duplicate function name {name!r}")
    t.finish()
    return Config(
        node=node, gateway=gateway, admin=admin, functions=functions, runtimes=runtimes,
        source=source, cache=cache, scheduler=scheduler, health=health, metrics=metrics,
        log=log_settings, auth=auth,
    )  # fmt: skip


def default_buffered_mb(max_body_bytes: int) -> int:
    """``gateway.max_buffered_mb`` by default: an eighth of RAM, 64 MiB..2 GiB."""
    body_mb = -(-max_body_bytes // (1 << 20))
    return max(body_mb, min(2048, max(64, host_memory_mb() // 8)))
