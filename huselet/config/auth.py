"""``[auth]``: tenants' keys file, signature checks and ingress limits, from TOML.

Parsed by :mod:`huselet.config.loader` like ``[health]``. Unlike most
sections it applies live: a reload re-reads the keys file and re-tunes the
limits without resetting any bucket (see :mod:`huselet.gateway.admission`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from huselet.config.table import describe
from huselet.errors import ConfigError
from huselet.tenants.sources import parse_networks

if TYPE_CHECKING:
    from huselet.config.table import ConfigTable

TENANT_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")


@dataclass(frozen=True)
class RateLimit:
    """A token bucket's shape: ``rate_per_s`` tokens a second, at most ``burst`` saved."""

    rate_per_s: float
    burst: float


@dataclass(frozen=True)
class AuthSettings:
    # Tenants, access keys and per-tenant limits (0600). None: no signed requests.
    keys_file: Path | None = None
    max_skew_s: int = 300  # a signed request's timestamp may be this far off the node's clock
    # Memory for the signatures seen within the skew window, per tenant (16-32 bytes each).
    replay_cache_bytes: int = 32 << 20
    # Per source address, for unauthenticated requests and failed authentications.
    source_rate: RateLimit | None = None
    max_sources: int = 65_536  # source buckets kept (least recently used forgotten)
    allow_cidrs: tuple[str, ...] = ()
    deny_cidrs: tuple[str, ...] = ()
    keys_poll_ms: int = 1000  # how often the keys file is checked for changes
    # A 429 is held back this long, so a client retrying in a loop costs little (0: at once).
    throttle_delay_ms: int = 250


def parse_auth(t: ConfigTable) -> AuthSettings:
    keys_file = t.optional_path("keys_file")
    settings = AuthSettings(
        keys_file=None if keys_file is None else keys_file.resolve(),
        max_skew_s=t.positive_int("max_skew_s", default=300),
        # A number: fractions of a MB size a test's (or a tiny node's) cache.
        replay_cache_bytes=int(
            t.number("replay_cache_mb", default=32, minimum=0.01, maximum=1_000_000) * (1 << 20)
        ),
        source_rate=parse_rate(t, "source_"),
        max_sources=t.positive_int("max_sources", default=65_536),
        allow_cidrs=_cidrs(t, "allow_cidrs"),
        deny_cidrs=_cidrs(t, "deny_cidrs"),
        keys_poll_ms=t.positive_int("keys_poll_ms", default=1000, minimum=50),
        throttle_delay_ms=t.non_negative_int("throttle_delay_ms", default=250),
    )
    if t.optional("replay_cache_size") is not None:
        raise ConfigError(
            t.key("replay_cache_size"),
            "replaced by replay_cache_mb, a bound in memory per tenant (README: Tenants)",
        )
    t.finish()
    if settings.keys_file is not None:
        # Validated now so `huselet run --check` and a reload refuse a bad file;
        # the daemon reads it again itself (the config never holds secrets).
        from huselet.tenants.keys import read_keys_file

        try:
            read_keys_file(settings.keys_file)
        except ConfigError as exc:
            raise ConfigError(t.key("keys_file"), exc.message) from None
    return settings


def _cidrs(t: ConfigTable, name: str) -> tuple[str, ...]:
    value = t.optional(name) or []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(t.key(name), f"expected an array of CIDR strings, got {describe(value)}")
    try:
        parse_networks(value)
    except ValueError as exc:
        raise ConfigError(t.key(name), str(exc)) from None
    return tuple(value)


def parse_rate(t: ConfigTable, prefix: str = "") -> RateLimit | None:
    """``rate_per_s`` (> 0, may be fractional) and ``burst`` (default max(1, rate)).

    ``prefix`` names the keys differently where the table has other meanings
    (``source_rate_per_s`` in ``[auth]``).
    """
    rate = t.optional(f"{prefix}rate_per_s")
    burst = t.optional(f"{prefix}burst")
    if rate is None:
        if burst is not None:
            raise ConfigError(t.key(f"{prefix}burst"), f"needs {prefix}rate_per_s")
        return None
    rate = t.number(f"{prefix}rate_per_s", default=0.0, exclusive=True)  # present: checked
    if burst is None:
        return RateLimit(rate, max(1.0, rate))
    return RateLimit(rate, float(t.positive_int(f"{prefix}burst")))  # present: checked
