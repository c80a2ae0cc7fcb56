"""``[cache]``: the package image cache's budgets, origins, publish directory, prefetch."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

from huselet.config.settings import CacheSettings, NodeSettings
from huselet.config.table import ConfigTable, describe
from huselet.errors import ConfigError

# Publishing one of these would watch (and pack) half the host.
_SYSTEM_DIRS = frozenset(
    Path(p)
    for p in (
        *("/bin", "/boot", "/dev", "/etc", "/home", "/lib", "/lib64", "/opt", "/proc"),
        *("/root", "/run", "/sbin", "/srv", "/sys", "/tmp", "/usr", "/var", "/var/lib"),
        "/var/tmp",
    )
)


def origin_url(t: ConfigTable, key: str) -> str:
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


def parse_cache(ct: ConfigTable, node: NodeSettings) -> CacheSettings:
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
        default_origin=origin_url(ct, "default_origin") if "default_origin" in ct.raw else None,
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
        allow_sdist=ct.boolean("allow_sdist", default=False),
        pip_timeout_s=ct.positive_int("pip_timeout_s", default=600),
        pip_concurrency=ct.positive_int("pip_concurrency", default=4, maximum=32),
        watch_packages=ct.boolean("watch_packages", default=False),
    )
    ct.finish()
    return settings
