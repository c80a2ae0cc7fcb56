"""Keep the worker's own modules out of the function's import namespace.

The worker imports ``protocol``, ``msgpack``, ``json``, ``socket``… before the
function's code runs (a fork zygote imports even more). Left in
``sys.modules``, those entries would shadow any module of the same name the
function ships: a function's ``protocol.py`` or ``cache.py`` would silently be
huselet's, and a function pinning its own ``msgpack`` would get ours.

So, just before the function's code is imported, every top-level module the
worker has loaded that the function's own code (its package directory or
image) also provides is *released*: removed from ``sys.modules`` (with its
submodules). The worker keeps working: it holds direct references to what it
uses, and the released module objects are kept alive here. The function's
``import protocol`` then finds its own file, as it would under plain CPython
with its directory first on ``sys.path``.

Not released: built-in and frozen modules (the interpreter's core, which no
``sys.path`` entry can shadow under CPython either), a few modules the
interpreter looks up by name at shutdown or import time, and ``huselet``
itself (function code imports ``huselet.worker`` for ``HTTPError``).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterable
from importlib.machinery import PathFinder
from types import ModuleType
from typing import Any

# Looked up through sys.modules by the interpreter itself (threading at
# shutdown, encodings by codec lookups, importlib/site by the import system).
PROTECTED = frozenset({"sys", "builtins", "threading", "encodings", "importlib", "site", "huselet"})

# Released modules stay referenced: their globals must outlive sys.modules.
_released: dict[str, ModuleType] = {}

Provides = Callable[[str], bool]


def _is_core(module: ModuleType) -> bool:
    spec = getattr(module, "__spec__", None)
    origin = getattr(spec, "origin", None)
    return origin in ("built-in", "frozen") or spec is None


def directory_provides(directory: str) -> Provides:
    """Whether ``directory`` (a package dir on sys.path) has a regular module ``name``."""
    try:
        # One listing up front: most names are not there, and a finder call per
        # loaded module (~90 of them) would cost a process worker's cold start ~1 ms.
        stems = {entry.partition(".")[0] for entry in os.listdir(directory)}
    except OSError:
        stems = set()

    def provides(name: str) -> bool:
        if name not in stems:
            return False
        spec = PathFinder.find_spec(name, [directory])
        # A namespace portion (loader None) loses to a regular package anywhere
        # on sys.path under CPython too: it does not shadow ours.
        return spec is not None and spec.loader is not None

    return provides


def image_provides(finder: Any) -> Provides:
    """Whether the image behind ``finder`` (an ImageFinder) has a regular module ``name``."""

    def provides(name: str) -> bool:
        spec = finder.find_spec(name, None)
        return (
            spec is not None
            and spec.loader is not None
            and str(spec.origin or "").startswith(finder.image_root)
        )

    return provides


def shadowed(provided_by: Iterable[Provides]) -> list[str]:
    """Top-level modules loaded now that the function's code also provides."""
    checks = list(provided_by)
    names = []
    for top in sorted({key.partition(".")[0] for key in list(sys.modules)}):
        module = sys.modules.get(top)
        if top in PROTECTED or top.startswith("__") or module is None or _is_core(module):
            continue
        if any(check(top) for check in checks):
            names.append(top)
    return names


def release(names: Iterable[str], keep: frozenset[str] = frozenset()) -> list[str]:
    """Remove ``names`` and their submodules (but not ``keep``) from ``sys.modules``."""
    wanted = set(names)
    gone = []
    for key in list(sys.modules):
        if key.partition(".")[0] in wanted and key not in keep:
            module = sys.modules.pop(key, None)
            if module is not None:
                _released[key] = module
                gone.append(key)
    return gone


def release_shadowed(provided_by: Iterable[Provides]) -> list[str]:
    """Release every loaded top-level module the function's code provides itself."""
    names = shadowed(provided_by)
    keep: frozenset[str] = frozenset()
    if "cache" in names and "cache.importer" in sys.modules:
        # The image importer imports this lazily (importlib.resources). Once
        # ``cache`` is the function's, a fresh import would find the wrong
        # package; a submodule left in sys.modules is found by its full name.
        import cache.resources  # noqa: F401

        keep = frozenset({"cache.resources"})
    return release(names, keep)
