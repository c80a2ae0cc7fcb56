"""The node's own bounds on what a central scheduler may deploy here.

A scheduler is trusted to place functions, not to run arbitrary code from
arbitrary places: every deploy/update command's spec is parsed like a config
``[[functions]]`` table and then checked against ``[scheduler]``'s policy
(:class:`~huselet.config.DeployPolicy`):

- code from a **path** (``package`` directory, ``image`` file) must resolve —
  symlinks followed — below one of ``package_roots`` (none configured: no path
  is allowed, only content-addressed ``digest`` code);
- code by **digest** must come from ``cache.default_origin`` or one of ``origins``;
- the **runtime** must be in ``runtimes`` (default: any the node has);
- ``memory_mb``, ``max_instances`` and ``timeout_ms`` within the policy's maxima.

A violation is the command error ``policy`` with a message that names the
rule; nothing of the spec is applied. The paths are checked on the raw spec,
*before* it is parsed (parsing looks inside the package for the handler).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from huselet.config import FunctionSettings
from huselet.config.trust import DeployPolicy
from huselet.errors import HuseletError

POLICY = "policy"


class PolicyViolation(HuseletError):
    code = POLICY


def _below(path: Path, roots: tuple[Path, ...]) -> bool:
    real = Path(os.path.realpath(path))
    return any(real == root or real.is_relative_to(root) for root in roots)


def check_paths(raw: Mapping[str, Any], policy: DeployPolicy, *, base_dir: Path) -> None:
    """The code paths of a raw spec (``package``, ``image``) against ``package_roots``."""
    for key in ("package", "image"):
        value = raw.get(key)
        if isinstance(value, str) and value:
            path = Path(value).expanduser()
            _check_path(key, path if path.is_absolute() else base_dir / path, policy)


def _check_path(what: str, path: Path, policy: DeployPolicy) -> None:
    if not policy.package_roots:
        raise PolicyViolation(
            f"{what} {path} refused: this node allows no {what} paths from the "
            "scheduler ([scheduler] package_roots is empty; deploy by digest)"
        )
    if not _below(path, policy.package_roots):
        roots = ", ".join(str(r) for r in policy.package_roots)
        raise PolicyViolation(
            f"{what} {path} refused: not below the node's package_roots ({roots})"
        )


def check_spec(
    fn: FunctionSettings,
    policy: DeployPolicy,
    *,
    offered_memory_mb: int,
    default_origin: str | None,
) -> None:
    """Raise :class:`PolicyViolation` if ``fn`` is outside ``policy``."""
    source = fn.code_source
    if source in ("package", "image"):
        path = fn.image if source == "image" and fn.image is not None else fn.package
        _check_path(source, path, policy)
    else:
        origin = fn.origin or default_origin
        allowed = set(policy.origins) | ({default_origin} if default_origin else set())
        if origin not in allowed:
            raise PolicyViolation(f"origin {origin!r} refused: not in the node's origins")
    if policy.runtimes is not None and fn.runtime not in policy.runtimes:
        raise PolicyViolation(
            f"runtime {fn.runtime!r} refused: the node allows {', '.join(policy.runtimes)}"
        )
    max_memory = policy.max_memory_mb or offered_memory_mb
    if fn.memory_mb > max_memory:
        raise PolicyViolation(f"memory_mb {fn.memory_mb} exceeds the node's bound {max_memory}")
    if fn.max_instances > policy.max_instances:
        raise PolicyViolation(
            f"max_instances {fn.max_instances} exceeds the node's bound {policy.max_instances}"
        )
    if fn.timeout_ms > policy.max_timeout_ms:
        raise PolicyViolation(
            f"timeout_ms {fn.timeout_ms} exceeds the node's bound {policy.max_timeout_ms}"
        )
