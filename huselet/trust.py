"""What a node trusts the central scheduler with: the ``[scheduler]`` deploy policy and link TLS.

Plain settings (frozen dataclasses, no imports from huselet) so that the
config parser, the fleet link and the tests can all import them without
import cycles. Parsed from ``[scheduler]`` by the config module; enforced by
:mod:`huselet.fleet.policy` and :mod:`huselet.fleet.link`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


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
