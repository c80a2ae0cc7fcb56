"""``[metrics]`` and ``[log]``: what the node exports and how much it logs per request.

``[metrics]``: the Prometheus registry is always kept (``huselet ctl metrics``
reads it over the admin socket) unless ``enabled = false``, which also turns
off the per-request observations (the bench compares both). The HTTP
listener for ``GET /metrics`` is off unless ``http`` is set, so two daemons on
one host never fight over a port by default; an address other than loopback
needs ``allow_remote = true`` (the exposition names every function and its
traffic).

``[log]``: the access log (one record per request at info) is sampled above
``access_rate`` records per second; ``ring_records`` bounds the in-memory log
ring each function keeps for ``huselet ctl logs``; ``buffer_kb`` bounds the log
lines waiting for stderr (written by a thread: a slow stderr never blocks the daemon).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from huselet.errors import ConfigError

if TYPE_CHECKING:
    from huselet.config.table import ConfigTable, TcpAddress

MAX_RING_RECORDS = 100_000
MIN_BUFFER_KB, MAX_BUFFER_KB = 16, 1 << 20


@dataclass(frozen=True)
class MetricsSettings:
    enabled: bool = True
    http: TcpAddress | None = None  # None: no listener; ``huselet ctl metrics`` still works
    allow_remote: bool = False


@dataclass(frozen=True)
class LogSettings:
    access_rate: int = 100  # access records per second written to the log; 0: none
    ring_records: int = 2000  # per function, for ``huselet ctl logs``
    # Log lines waiting for stderr (huselet.logwriter); beyond it lines are dropped, counted.
    buffer_kb: int = 4096


def parse_metrics(t: ConfigTable) -> MetricsSettings:
    d = MetricsSettings()
    http = t.tcp_address("http", default="") if t.string("http", default="") else None
    settings = MetricsSettings(
        enabled=t.boolean("enabled", default=d.enabled),
        http=http,
        allow_remote=t.boolean("allow_remote", default=d.allow_remote),
    )
    t.finish()
    if http is not None and not http.is_loopback and not settings.allow_remote:
        raise ConfigError(
            t.key("http"),
            f"{http} is reachable from other hosts; set metrics.allow_remote = true "
            "(and firewall it to your Prometheus) or use a loopback address",
        )
    return settings


def parse_log(t: ConfigTable) -> LogSettings:
    d = LogSettings()
    settings = LogSettings(
        access_rate=t.non_negative_int("access_rate", default=d.access_rate),
        ring_records=t.positive_int("ring_records", default=d.ring_records),
        buffer_kb=t.positive_int("buffer_kb", default=d.buffer_kb),
    )
    t.finish()
    if settings.ring_records > MAX_RING_RECORDS:
        raise ConfigError(
            t.key("ring_records"), f"at most {MAX_RING_RECORDS}, got {settings.ring_records}"
        )
    if not MIN_BUFFER_KB <= settings.buffer_kb <= MAX_BUFFER_KB:
        raise ConfigError(
            t.key("buffer_kb"),
            f"between {MIN_BUFFER_KB} and {MAX_BUFFER_KB}, got {settings.buffer_kb}",
        )
    return settings
