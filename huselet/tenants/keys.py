"""The keys file: tenants, their access keys, allowed functions and limits.

TOML (or JSON when the name ends in ``.json``), mode 0600, e.g.::

    [[tenants]]
    name = "acme"
    functions = ["report", "acme-*"]   # names, or prefixes ending in "*"
    rate_per_s = 50                    # token bucket; absent: no rate limit
    burst = 100                        # default: max(1, rate_per_s)
    max_concurrent = 20                # absent: no cap

      [[tenants.keys]]
      id = "HKX2J4…"
      secret = "…"
      not_before = 2026-11-01T00:00:00Z   # optional; TOML datetime or RFC 3339 string
      expires = 2026-12-01T00:00:00Z      # optional

Two keys of one tenant with overlapping windows make a rotation: callers
switch to the new key while the old one still works. The file is validated
whole; any problem names its key path, and a bad file never replaces a good one.
"""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from huselet.config.auth import TENANT_NAME, RateLimit, parse_rate
from huselet.config.limits import read_small_file
from huselet.config.table import ConfigTable, describe
from huselet.errors import ConfigError

MAX_KEYS_FILE_BYTES = 1 << 20
KEY_ID = re.compile(r"^[A-Za-z0-9_-]{4,64}$")
FUNCTION_PATTERN = re.compile(r"^(?:[a-z0-9][a-z0-9_-]{0,62}|[a-z0-9_-]{0,62}\*)$")
MIN_SECRET_CHARS = 16


class KeysFileError(ConfigError):
    """The keys file cannot be used; the message names the file and key path."""


@dataclass(frozen=True)
class TenantSettings:
    name: str
    functions: tuple[str, ...] = ()  # exact names, or prefixes ending in "*"
    rate: RateLimit | None = None
    max_concurrent: int | None = None

    def grants(self, function: str) -> bool:
        """Whether the keys file grants this tenant ``function`` (by name or prefix)."""
        for pattern in self.functions:
            if pattern[-1:] == "*":
                if function.startswith(pattern[:-1]):
                    return True
            elif pattern == function:
                return True
        return False


@dataclass(frozen=True)
class KeyEntry:
    key_id: str
    tenant: str
    secret: bytes = field(repr=False)
    not_before: float | None = None  # seconds since the epoch
    expires: float | None = None

    def valid_at(self, now: float) -> bool:
        return (self.not_before is None or now >= self.not_before) and (
            self.expires is None or now < self.expires
        )

    def describe(self, now: float) -> dict[str, Any]:
        """Everything about the key but its secret."""
        if self.not_before is not None and now < self.not_before:
            state = "pending"
        elif self.expires is not None and now >= self.expires:
            state = "expired"
        else:
            state = "active"
        return {
            "id": self.key_id,
            "tenant": self.tenant,
            "not_before": _iso(self.not_before),
            "expires": _iso(self.expires),
            "state": state,
        }


@dataclass(frozen=True)
class KeyRing:
    tenants: Mapping[str, TenantSettings]
    keys: Mapping[str, KeyEntry]


EMPTY_RING = KeyRing({}, {})


def read_keys_file(path: Path) -> KeyRing:
    """Read and validate ``path``; KeysFileError names what is wrong (never a secret)."""
    try:
        text, mode = read_small_file(path, MAX_KEYS_FILE_BYTES, "", f"keys file {path}")
    except ConfigError as exc:
        raise KeysFileError("", exc.message) from None
    if mode & 0o077:
        raise KeysFileError(
            "",
            f"keys file {path} is accessible by group or others "
            f"(mode {mode & 0o777:03o}); it holds secrets: chmod 600",
        )
    try:
        raw = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
    except (ValueError, tomllib.TOMLDecodeError) as exc:
        # The decoder's message quotes no values, only positions.
        kind = "JSON" if path.suffix == ".json" else "TOML"
        raise KeysFileError("", f"keys file {path} is not valid {kind}: {exc}") from None
    if not isinstance(raw, dict):
        raise KeysFileError("", f"keys file {path} must hold a table")
    try:
        return parse_keys(raw, path.parent)
    except ConfigError as exc:
        raise KeysFileError("", f"keys file {path}: {exc}") from None


def parse_keys(raw: Mapping[str, Any], base_dir: Path) -> KeyRing:
    t = ConfigTable(raw, "", base_dir)
    tenants: dict[str, TenantSettings] = {}
    keys: dict[str, KeyEntry] = {}
    for tt in t.table_list("tenants"):
        tenant = _parse_tenant(tt)
        if tenant.name in tenants:
            raise ConfigError(tt.key("name"), f"duplicate tenant {tenant.name!r}")
        tenants[tenant.name] = tenant
        for kt in tt.table_list("keys"):
            entry = _parse_key(kt, tenant.name)
            if entry.key_id in keys:
                raise ConfigError(kt.key("id"), f"duplicate key id {entry.key_id!r}")
            keys[entry.key_id] = entry
        tt.finish()
    t.finish()
    return KeyRing(tenants, keys)


def _parse_tenant(tt: ConfigTable) -> TenantSettings:
    name = tt.string("name", pattern=TENANT_NAME, pattern_help="lowercase letters, digits, - and _")
    raw_fns = tt.optional("functions") or []
    if not isinstance(raw_fns, list) or not all(
        isinstance(p, str) and FUNCTION_PATTERN.match(p) for p in raw_fns
    ):
        raise ConfigError(
            tt.key("functions"),
            'expected an array of function names or prefixes ending in "*", '
            f"got {describe(raw_fns)}",
        )
    rate = parse_rate(tt)
    max_concurrent = None
    if tt.optional("max_concurrent") is not None:
        max_concurrent = tt.positive_int("max_concurrent")
    return TenantSettings(name, tuple(raw_fns), rate, max_concurrent)


def _parse_key(kt: ConfigTable, tenant: str) -> KeyEntry:
    key_id = kt.string("id", pattern=KEY_ID, pattern_help="4-64 letters, digits, - and _")
    secret = kt.optional("secret")
    # Never echo the value: it is a secret, even when it is a bad one.
    if not isinstance(secret, str):
        raise ConfigError(kt.key("secret"), "required: a string")
    if len(secret) < MIN_SECRET_CHARS:
        raise ConfigError(
            kt.key("secret"),
            f"too short (at least {MIN_SECRET_CHARS} characters; use huselet keygen)",
        )
    not_before = _instant(kt, "not_before")
    expires = _instant(kt, "expires")
    if not_before is not None and expires is not None and expires <= not_before:
        raise ConfigError(kt.key("expires"), "must be after not_before")
    kt.finish()
    return KeyEntry(key_id, tenant, secret.encode("utf-8"), not_before, expires)


def _instant(t: ConfigTable, name: str) -> float | None:
    value = t.optional(name)
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            raise ConfigError(
                t.key(name), f"expected an RFC 3339 date-time, got {describe(value)}"
            ) from None
    if not isinstance(value, datetime):
        raise ConfigError(t.key(name), f"expected a date-time, got {describe(value)}")
    if value.tzinfo is None:
        raise ConfigError(t.key(name), "needs a time zone offset (e.g. Z for UTC)")
    return value.timestamp()


def _iso(at: float | None) -> str | None:
    if at is None:
        return None
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
