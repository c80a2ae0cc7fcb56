"""What a node trusts the central scheduler with: the ``[scheduler]`` deploy policy and link TLS.

Plain settings (frozen dataclasses; only :mod:`huselet.errors` imported) so
that the config parser, the fleet link and the tests can all import them
without import cycles. Parsed from ``[scheduler]`` by the config module; enforced by
:mod:`huselet.fleet.policy` and :mod:`huselet.fleet.link`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from huselet.errors import ConfigError


@dataclass(frozen=True)
class DeployPolicy:
    """``[scheduler]`` bounds on what the central scheduler may deploy on this node.

    Checked for every deploy/update command (and for deployed functions restored
    at start) by :mod:`huselet.fleet.policy`; a spec outside them is refused with
    command error ``policy``. The node's own ``[[functions]]`` are not subject to it.
    """

    package_roots: tuple[Path, ...] = ()  # package dirs / image files only below these
    origins: tuple[str, ...] = ()  # digest origins allowed (besides cache.default_origin)
    runtimes: tuple[str, ...] | None = None  # None: every runtime the node has
    max_memory_mb: int | None = None  # None: the memory the node offers (memory_mb)
    max_instances: int = 64
    max_timeout_ms: int = 900_000


@dataclass(frozen=True)
class LinkTlsSettings:
    """``[scheduler]`` ``tls_*``: mutual TLS on the link (the fleet CA, this node's cert)."""

    ca: Path
    cert: Path
    key: Path
    server_name: str | None = None  # checked against the scheduler's cert; default: its host


# --- parsing ([scheduler] keys) ----------------------------------------------------------
# These take the config table being validated as ``Any`` and use only its
# getters (``key``, ``_get``, ``positive_int``, ``optional_path``), so they
# work with the table class wherever the config package keeps it.


def loopback_host(host: str) -> bool:
    import ipaddress

    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _string_list(st: Any, name: str) -> list[str] | None:
    value = st._get(name, None)  # marks the key as known
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ConfigError(st.key(name), f"expected an array of non-empty strings, got {value!r}")
    return value


def parse_policy(st: Any) -> DeployPolicy:
    roots = _string_list(st, "package_roots") or []
    resolved = []
    for i, root in enumerate(roots):
        path = Path(root).expanduser()
        if not path.is_absolute():
            raise ConfigError(f"{st.key('package_roots')}[{i}]", "must be an absolute path")
        resolved.append(Path(os.path.realpath(path)))
    runtimes = _string_list(st, "runtimes")
    max_memory = st._get("max_memory_mb", None)
    if max_memory is not None:
        max_memory = st.positive_int("max_memory_mb")
    return DeployPolicy(
        package_roots=tuple(resolved),
        origins=tuple(_string_list(st, "origins") or ()),
        runtimes=tuple(runtimes) if runtimes is not None else None,
        max_memory_mb=max_memory,
        max_instances=st.positive_int("max_instances", default=64),
        max_timeout_ms=st.positive_int("max_timeout_ms", default=900_000),
    )


def parse_link_tls(st: Any) -> LinkTlsSettings | None:
    files = {k: st.optional_path(f"tls_{k}") for k in ("ca", "cert", "key")}
    server_name = st._get("tls_server_name", None)
    if server_name is not None and not isinstance(server_name, str):
        raise ConfigError(st.key("tls_server_name"), "expected a string")
    if not any(files.values()):
        return None
    missing = [k for k, v in files.items() if v is None]
    if missing:
        raise ConfigError(st.key(f"tls_{missing[0]}"), "tls_ca, tls_cert and tls_key go together")
    ca, cert, key = files["ca"], files["cert"], files["key"]
    assert ca is not None and cert is not None and key is not None
    return LinkTlsSettings(ca=ca, cert=cert, key=key, server_name=server_name)
