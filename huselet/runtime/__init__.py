"""Runtime plugins: the registry and discovery through entry points.

Built-in runtimes are registered here, once (:data:`BUILTIN`; not also as
entry points of huselet's own package). Third-party ones are found in the
``huselet.runtimes`` entry-point group (``name = "package.module:Class"``); a
third-party runtime cannot take a built-in's name.
"""

from __future__ import annotations

from collections.abc import Mapping
from importlib.metadata import entry_points
from typing import Any

from huselet.log import get_logger
from huselet.runtime.base import (
    ExitStatus,
    InstanceHandle,
    InstanceSpec,
    Runtime,
    RuntimeConfigError,
    StartFailed,
)

__all__ = [
    "ExitStatus",
    "InstanceHandle",
    "InstanceSpec",
    "Runtime",
    "RuntimeConfigError",
    "StartFailed",
    "available_runtimes",
]

log = get_logger("runtime")

BUILTIN = {
    "process": "huselet.runtime.process:ProcessRuntime",
    "fork": "huselet.runtime.fork:ForkRuntime",
    "bwrap": "huselet.runtime.bwrap:BwrapRuntime",
    "oci": "huselet.runtime.oci:OciRuntime",
}


def _load(target: str) -> type[Runtime]:
    module_name, _, attr = target.partition(":")
    module = __import__(module_name, fromlist=[attr])
    cls = getattr(module, attr)
    if not (isinstance(cls, type) and issubclass(cls, Runtime)):
        raise RuntimeConfigError(f"{target} is not a huselet Runtime subclass")
    return cls


def available_runtimes() -> Mapping[str, str]:
    """Runtime name → "module:Class", built-ins first, then entry points."""
    found: dict[str, str] = dict(BUILTIN)
    for ep in entry_points(group="huselet.runtimes"):
        found.setdefault(ep.name, ep.value)
    return found


def create_runtimes(
    names: set[str], tables: Mapping[str, Mapping[str, Any]], *, node: Any
) -> dict[str, Runtime]:
    """Instantiate the runtimes the configuration uses."""
    targets = available_runtimes()
    runtimes: dict[str, Runtime] = {}
    for name in sorted(names):
        if name not in targets:
            raise RuntimeConfigError(f"unknown runtime {name!r}")
        cls = _load(targets[name])
        runtimes[name] = cls(tables.get(name, {}), node=node)
    return runtimes
