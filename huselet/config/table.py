"""The TOML table validator every config section and every ``[runtimes.NAME]`` table uses.

:class:`ConfigTable` wraps one table: typed getters that name the key path in
every error and remember which keys were read, so :meth:`ConfigTable.finish`
refuses the unknown ones. One validator for the whole file, so every key gets
the same wording and the same limits.
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from huselet.config.limits import path_problem
from huselet.errors import ConfigError


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


def describe(value: Any) -> str:
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array"
    return repr(value)


class ConfigTable:
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
        if default is REQUIRED:
            raise ConfigError(self.key(name), "required key is missing")
        return default

    def optional(self, name: str) -> Any:
        """The raw value of an optional key (None when absent), for callers that check it."""
        return self._get(name, None)

    def finish(self) -> None:
        unknown = sorted(set(self.raw) - self._used)
        if unknown:
            raise ConfigError(self.key(unknown[0]), "unknown key")

    def table(self, name: str) -> ConfigTable:
        value = self._get(name, {})
        if not isinstance(value, dict):
            raise ConfigError(self.key(name), f"expected a table, got {describe(value)}")
        return ConfigTable(value, self.key(name), self.base_dir)

    def table_list(self, name: str) -> list[ConfigTable]:
        value = self._get(name, [])
        if not isinstance(value, list):
            raise ConfigError(self.key(name), f"expected an array of tables, got {describe(value)}")
        out = []
        for i, item in enumerate(value):
            if not isinstance(item, dict):
                raise ConfigError(
                    f"{self.key(name)}[{i}]", f"expected a table, got {describe(item)}"
                )
            out.append(ConfigTable(item, f"{self.key(name)}[{i}]", self.base_dir))
        return out

    def string(
        self,
        name: str,
        default: Any = None,
        *,
        pattern: re.Pattern[str] | None = None,
        pattern_help: str = "",
        non_empty: bool = False,
    ) -> str:
        value = self._get(name, REQUIRED if default is None else default)
        if not isinstance(value, str) or (non_empty and not value):
            what = "a non-empty string" if non_empty else "a string"
            raise ConfigError(self.key(name), f"expected {what}, got {describe(value)}")
        if pattern is not None and not pattern.match(value):
            hint = f" (expected {pattern_help})" if pattern_help else ""
            raise ConfigError(self.key(name), f"invalid value {describe(value)}{hint}")
        return value

    def choice(self, name: str, choices: tuple[str, ...], *, default: str) -> str:
        value = self._get(name, default)
        if not isinstance(value, str) or value not in choices:
            raise ConfigError(
                self.key(name), f"expected one of {', '.join(choices)}, got {describe(value)}"
            )
        return value

    def boolean(self, name: str, *, default: bool) -> bool:
        value = self._get(name, default)
        if not isinstance(value, bool):
            raise ConfigError(self.key(name), f"expected true or false, got {describe(value)}")
        return value

    def positive_int(
        self,
        name: str,
        *,
        default: int | None = None,
        minimum: int = 1,
        maximum: int | None = None,
        maximum_help: str = "",
    ) -> int:
        value = self._get(name, REQUIRED if default is None else default)
        if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
            what = "a positive integer" if minimum == 1 else f"an integer ≥ {minimum}"
            raise ConfigError(self.key(name), f"expected {what}, got {describe(value)}")
        if maximum is not None and value > maximum:
            why = f" ({maximum_help})" if maximum_help else ""
            raise ConfigError(self.key(name), f"{value} is over the maximum of {maximum}{why}")
        return value

    def non_negative_int(self, name: str, *, default: int) -> int:
        value = self._get(name, default)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ConfigError(
                self.key(name), f"expected a non-negative integer, got {describe(value)}"
            )
        return value

    def number(
        self,
        name: str,
        *,
        default: float,
        minimum: float = 0.0,
        exclusive: bool = False,
        maximum: float | None = None,
    ) -> float:
        """A float or an integer (TOML writes ``1`` and ``1.0`` alike) of at least
        ``minimum`` (above it, when ``exclusive``), finite, and at most ``maximum``
        when one is given."""
        value = self._get(name, default)
        numeric = isinstance(value, int | float) and not isinstance(value, bool)
        # Written as "not in range", so NaN and inf (which TOML can spell) are refused
        # too: a caller multiplying or converting to int never meets them.
        low_ok = numeric and (value > minimum if exclusive else value >= minimum)
        if not low_ok or not math.isfinite(value) or (maximum is not None and value > maximum):
            bound = f"{'>' if exclusive else '≥'} {minimum:g}"
            if maximum is not None:
                bound += f" and ≤ {maximum:g}"
            raise ConfigError(self.key(name), f"expected a number {bound}, got {describe(value)}")
        return float(value)

    def int_list(self, name: str, *, default: list[int]) -> list[int]:
        value = self._get(name, default)
        if not isinstance(value, list) or not all(
            isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value
        ):
            raise ConfigError(
                self.key(name),
                f"expected an array of non-negative integers, got {describe(value)}",
            )
        return value

    def path(self, name: str, default: Path | None = None, *, force_default: bool = False) -> Path:
        if force_default and default is not None:
            self._used.add(name)
            return default
        value = self._get(name, REQUIRED if default is None else str(default))
        if not isinstance(value, str) or not value or "\0" in value:
            raise ConfigError(self.key(name), f"expected a path string, got {describe(value)}")
        problem = path_problem(value)
        if problem:  # would fail every later stat with ENAMETOOLONG
            raise ConfigError(self.key(name), f"path {problem}")
        p = Path(value).expanduser()
        return p if p.is_absolute() else self.base_dir / p

    def absolute_paths(self, name: str) -> tuple[str, ...]:
        """An array of absolute path strings (default empty), kept as written: they name
        paths on the host or inside a sandbox, so nothing is resolved against ``base_dir``."""
        value = self._get(name, [])
        if not isinstance(value, list) or not all(
            isinstance(v, str) and v.startswith("/") and "\0" not in v and not path_problem(v)
            for v in value
        ):
            raise ConfigError(
                self.key(name), f"expected an array of absolute paths, got {describe(value)}"
            )
        return tuple(value)

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
                self.key(name), f'expected "host:port" or "[v6]:port", got {describe(value)}'
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

    def optional_tcp_address(self, name: str) -> TcpAddress | None:
        if name not in self.raw:
            self._used.add(name)
            return None
        return self.tcp_address(name, default="")

    def tcp_address_list(self, name: str) -> list[TcpAddress]:
        value = self._get(name, REQUIRED)
        if not isinstance(value, list):
            raise ConfigError(
                self.key(name), f"expected an array of addresses, got {describe(value)}"
            )
        out = []
        for i, item in enumerate(value):
            try:
                out.append(ConfigTable({"a": item}, "", self.base_dir).tcp_address("a", default=""))
            except ConfigError as exc:
                raise ConfigError(f"{self.key(name)}[{i}]", exc.problem) from None
        return out


REQUIRED: Any = object()
