"""Configuration: one TOML file validated at start into frozen, typed settings.

Every problem names its key path and what was wrong, e.g.::

    config error: functions[0].timeout_ms: expected a positive integer, got "5s"

Unknown keys are errors (a typo must not silently fall back to a default).
Relative paths resolve against the config file's directory; the embedded
default (``huselet/default.toml``) resolves against the ``huselet`` package, so
``huselet run`` alone serves the bundled ``hello`` example.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from huselet.errors import ConfigError

# A sun_path holds 108 bytes including the terminating NUL.
MAX_UNIX_PATH = 107
FUNCTION_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
HANDLER = re.compile(
    r"^([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*):([A-Za-z_][A-Za-z0-9_]*)$"
)
LOG_LEVELS = ("debug", "info", "warning", "error")
EMBEDDED_DEFAULT = Path(__file__).with_name("default.toml")


@dataclass(frozen=True)
class TcpAddress:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def is_loopback(self) -> bool:
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False


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


@dataclass(frozen=True)
class AdminSettings:
    socket: Path
    # Who may talk to the admin socket besides root and the daemon's own uid.
    allowed_uids: tuple[int, ...] = ()


@dataclass(frozen=True)
class FunctionSettings:
    name: str
    package: Path
    handler: str
    runtime: str = "process"
    memory_mb: int = 256
    timeout_ms: int = 30_000
    max_instances: int = 8
    min_instances: int = 0
    idle_timeout_ms: int = 60_000  # keep-alive of an idle instance
    start_timeout_ms: int = 10_000
    max_queue: int | None = None  # None: gateway.queue_per_function
    env: Mapping[str, str] = field(default_factory=dict)

    @property
    def handler_module(self) -> str:
        return self.handler.split(":", 1)[0]

    @property
    def handler_attr(self) -> str:
        return self.handler.split(":", 1)[1]


@dataclass(frozen=True)
class Config:
    node: NodeSettings
    gateway: GatewaySettings
    admin: AdminSettings
    functions: tuple[FunctionSettings, ...]
    # Per-runtime tables ([runtimes.NAME]); each plugin validates its own.
    runtimes: Mapping[str, Mapping[str, Any]]
    source: Path | None  # None: the embedded default

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
        raw_bytes = source.read_bytes()
    except OSError as exc:
        raise ConfigError("", f"cannot read {source}: {exc.strerror}") from None
    try:
        raw = tomllib.loads(raw_bytes.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError("", f"{source} is not UTF-8") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("", f"{source} is not valid TOML: {exc}") from None
    base = source.resolve().parent
    return parse_config(
        raw,
        base_dir=base,
        embedded=path is None,
        known_runtimes=frozenset(known_runtimes),
        source=None if path is None else source.resolve(),
    )


def parse_config(
    raw: Mapping[str, Any],
    *,
    base_dir: Path,
    embedded: bool = False,
    known_runtimes: frozenset[str] = frozenset({"process"}),
    source: Path | None = None,
) -> Config:
    t = _Table(raw, "", base_dir)
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
    gateway = GatewaySettings(
        http=gw_t.tcp_address("http", default="127.0.0.1:8470"),
        max_body_bytes=gw_t.positive_int("max_body_bytes", default=6 * 1024 * 1024),
        queue_per_function=gw_t.positive_int("queue_per_function", default=1000),
        max_connections=gw_t.positive_int("max_connections", default=1024),
        idle_timeout_ms=gw_t.positive_int("idle_timeout_ms", default=30_000),
        read_timeout_ms=gw_t.positive_int("read_timeout_ms", default=10_000),
        auth_token_file=gw_t.optional_path("auth_token_file"),
        allow_unauthenticated=gw_t.boolean("allow_unauthenticated", default=False),
    )
    gw_t.finish()
    if (
        not gateway.http.is_loopback
        and gateway.auth_token_file is None
        and not gateway.allow_unauthenticated
    ):
        raise ConfigError(
            "gateway.http",
            f"{gateway.http} is reachable from other hosts but no gateway.auth_token_file is "
            "set; set one, or gateway.allow_unauthenticated = true if a trusted proxy guards it",
        )
    if gateway.auth_token_file is not None and not gateway.auth_token_file.is_file():
        raise ConfigError("gateway.auth_token_file", f"{gateway.auth_token_file} does not exist")

    admin_t = t.table("admin")
    admin = AdminSettings(
        socket=admin_t.path("socket", default=node.run_dir / "admin.sock", force_default=embedded),
        allowed_uids=tuple(admin_t.int_list("allowed_uids", default=[])),
    )
    admin_t.finish()
    _check_unix_path("admin.socket", admin.socket)
    # The longest socket the daemon creates under run_dir is fn/<63-char name>.sock.
    _check_unix_path("node.run_dir", node.run_dir / "fn" / ("x" * 63 + ".sock"))

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
        _parse_function(ft, gateway, known_runtimes) for ft in t.table_list("functions")
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
    )


def _parse_function(
    ft: _Table, gateway: GatewaySettings, known_runtimes: frozenset[str]
) -> FunctionSettings:
    name = ft.string(
        "name", pattern=FUNCTION_NAME, pattern_help="lowercase letters, digits, - and _, at most 63"
    )
    handler = ft.string("handler", pattern=HANDLER, pattern_help='"module:function"')
    package = ft.path("package")
    if not package.is_dir():
        raise ConfigError(ft.key("package"), f"package directory {package} does not exist")
    module = handler.split(":", 1)[0]
    rel = Path(*module.split("."))
    if not (
        (package / rel).with_suffix(".py").is_file() or (package / rel / "__init__.py").is_file()
    ):
        raise ConfigError(ft.key("handler"), f"module {module!r} not found in package {package}")
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
        package=package.resolve(),
        handler=handler,
        runtime=runtime,
        memory_mb=ft.positive_int("memory_mb", default=256, minimum=16),
        timeout_ms=ft.positive_int("timeout_ms", default=30_000),
        max_instances=max_instances,
        min_instances=min_instances,
        idle_timeout_ms=ft.positive_int("idle_timeout_ms", default=60_000),
        start_timeout_ms=ft.positive_int("start_timeout_ms", default=10_000),
        max_queue=ft.positive_int("max_queue", default=gateway.queue_per_function),
        env=env,
    )
    ft.finish()
    return fn


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


def _describe(value: Any) -> str:
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array"
    return repr(value)


class _Table:
    """One TOML table being validated: typed getters that remember which keys were used."""

    def __init__(self, raw: Mapping[str, Any], where: str, base_dir: Path) -> None:
        self.raw = raw
        self.where = where
        self.base_dir = base_dir
        self._used: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self.where}.{name}" if self.where else name

    def key_names(self) -> list[str]:
        self._used.update(self.raw)
        return list(self.raw)

    def _get(self, name: str, default: Any) -> Any:
        self._used.add(name)
        if name in self.raw:
            return self.raw[name]
        if default is _REQUIRED:
            raise ConfigError(self.key(name), "required key is missing")
        return default

    def finish(self) -> None:
        unknown = sorted(set(self.raw) - self._used)
        if unknown:
            raise ConfigError(self.key(unknown[0]), "unknown key")

    def table(self, name: str) -> _Table:
        value = self._get(name, {})
        if not isinstance(value, dict):
            raise ConfigError(self.key(name), f"expected a table, got {_describe(value)}")
        return _Table(value, self.key(name), self.base_dir)

    def table_list(self, name: str) -> list[_Table]:
        value = self._get(name, [])
        if not isinstance(value, list):
            raise ConfigError(
                self.key(name), f"expected an array of tables, got {_describe(value)}"
            )
        out = []
        for i, item in enumerate(value):
            if not isinstance(item, dict):
                raise ConfigError(
                    f"{self.key(name)}[{i}]", f"expected a table, got {_describe(item)}"
                )
            out.append(_Table(item, f"{self.key(name)}[{i}]", self.base_dir))
        return out

    def string(
        self,
        name: str,
        default: Any = None,
        *,
        pattern: re.Pattern[str] | None = None,
        pattern_help: str = "",
    ) -> str:
        value = self._get(name, _REQUIRED if default is None else default)
        if not isinstance(value, str):
            raise ConfigError(self.key(name), f"expected a string, got {_describe(value)}")
        if pattern is not None and not pattern.match(value):
            hint = f" (expected {pattern_help})" if pattern_help else ""
            raise ConfigError(self.key(name), f"invalid value {_describe(value)}{hint}")
        return value

    def choice(self, name: str, choices: tuple[str, ...], *, default: str) -> str:
        value = self.string(name, default=default)
        if value not in choices:
            raise ConfigError(
                self.key(name), f"expected one of {', '.join(choices)}, got {_describe(value)}"
            )
        return value

    def boolean(self, name: str, *, default: bool) -> bool:
        value = self._get(name, default)
        if not isinstance(value, bool):
            raise ConfigError(self.key(name), f"expected true or false, got {_describe(value)}")
        return value

    def positive_int(self, name: str, *, default: int | None = None, minimum: int = 1) -> int:
        value = self._get(name, _REQUIRED if default is None else default)
        if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
            what = "a positive integer" if minimum == 1 else f"an integer ≥ {minimum}"
            raise ConfigError(self.key(name), f"expected {what}, got {_describe(value)}")
        return value

    def non_negative_int(self, name: str, *, default: int) -> int:
        value = self._get(name, default)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ConfigError(
                self.key(name), f"expected a non-negative integer, got {_describe(value)}"
            )
        return value

    def int_list(self, name: str, *, default: list[int]) -> list[int]:
        value = self._get(name, default)
        if not isinstance(value, list) or not all(
            isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value
        ):
            raise ConfigError(
                self.key(name),
                f"expected an array of non-negative integers, got {_describe(value)}",
            )
        return value

    def path(self, name: str, default: Path | None = None, *, force_default: bool = False) -> Path:
        if force_default and default is not None:
            self._used.add(name)
            return default
        value = self._get(name, _REQUIRED if default is None else str(default))
        if not isinstance(value, str) or not value or "\0" in value:
            raise ConfigError(self.key(name), f"expected a path string, got {_describe(value)}")
        p = Path(value).expanduser()
        return p if p.is_absolute() else self.base_dir / p

    def optional_path(self, name: str) -> Path | None:
        if name not in self.raw:
            self._used.add(name)
            return None
        return self.path(name)

    def tcp_address(self, name: str, *, default: str) -> TcpAddress:
        value = self.string(name, default=default)
        m = re.match(r"^(?:\[([0-9A-Fa-f:.]+)\]|([^:\[\]]+)):(\d{1,5})$", value)
        if not m:
            raise ConfigError(
                self.key(name), f'expected "host:port" or "[v6]:port", got {_describe(value)}'
            )
        host = m.group(1) or m.group(2)
        port = int(m.group(3))
        if port > 65535:
            raise ConfigError(self.key(name), f"port {port} is out of range 0..65535")
        if host != "localhost":
            try:
                ipaddress.ip_address(host)
            except ValueError:
                raise ConfigError(
                    self.key(name), f"{host!r} is not an IP address (or localhost)"
                ) from None
        return TcpAddress(host, port)


_REQUIRED: Any = object()
