"""Byte-compiled code for what zygotes and instances import.

Zygotes and instances run ``python -I -B``: they never write a ``.pyc``. A
module whose ``.pyc`` is missing or stale is compiled from source in every
zygote (``huselet/sandbox/instance.py`` and the rest of the sandbox side are
imported by nothing else, so no one ever writes theirs), which costs the
zygote the compile and each instance forked from it page faults: the code
objects end up scattered over a heap the compiler churned, and the first
calls in the child dirty those pages (issue 12; measured with
``bench/bench_startsteps.py``).

So the install path compiles the packages (``scripts/bootstrap.sh`` runs
``python -I -m huselet.bytecode``; a ``pip install`` of a wheel does it too),
and the daemon checks at start (:func:`ensure_compiled`): stale or missing
``.pyc`` files are written when it may write there (a source checkout), or
reported once (a read-only install, e.g. systemd's ``ProtectSystem=strict``).
The check costs one ``stat`` and a 16-byte read per module of the three
packages (a few milliseconds).
"""

from __future__ import annotations

import importlib.util
import os
import struct
import sys
from pathlib import Path

# The packages of this distribution; zygotes and instances import from all three.
PACKAGES = ("huselet", "protocol", "cache")
# Function code shipped as an example (the default config's ``hello``): the
# function's own package, packed into images, not imported from here.
SKIPPED_DIRS = frozenset({"examples", "__pycache__"})

# A .pyc starts with: magic (4 bytes), flags (4), then source mtime (4) and
# size (4) when flags is 0 (timestamp-checked), or a source hash when bit 0 is set.
_HEADER = struct.Struct("<4sIII")
# What an operator runs to write them (scripts/bootstrap.sh runs it).
FIX_COMMAND = f"{sys.executable} -I -m huselet.bytecode"
_HASH_BASED = 0b01


def package_dirs() -> list[Path]:
    """Where this interpreter imports :data:`PACKAGES` from (a checkout or site-packages)."""
    dirs: list[Path] = []
    for name in PACKAGES:
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.submodule_search_locations:
            dirs.extend(Path(p) for p in spec.submodule_search_locations)
    return dirs


def _valid(source: Path, cached: str) -> bool:
    """Would the import system use ``cached`` for ``source`` rather than compile it?"""
    try:
        with open(cached, "rb") as f:
            header = f.read(_HEADER.size)
        st = source.stat()
    except OSError:
        return False
    if len(header) < _HEADER.size:
        return False
    magic, flags, mtime, size = _HEADER.unpack(header)
    if magic != importlib.util.MAGIC_NUMBER:
        return False
    if flags & _HASH_BASED:
        return True  # checked against the source's hash at import, if at all
    return bool(mtime == int(st.st_mtime) & 0xFFFFFFFF and size == st.st_size & 0xFFFFFFFF)


def sources(dirs: list[Path] | None = None) -> list[Path]:
    """Every module of the packages (default: where this interpreter imports them from)."""
    out = []
    for root in package_dirs() if dirs is None else dirs:
        for source in sorted(root.rglob("*.py")):
            if not SKIPPED_DIRS.intersection(source.relative_to(root).parts[:-1]):
                out.append(source)
    return out


def stale_sources(dirs: list[Path] | None = None) -> list[Path]:
    """Every module under ``dirs`` whose ``.pyc`` is missing or out of date."""
    return [s for s in sources(dirs) if not _valid(s, importlib.util.cache_from_source(str(s)))]


def writable(source: Path) -> bool:
    """Can this process write ``source``'s ``__pycache__`` (or create it)?"""
    cache_dir = source.parent / "__pycache__"
    target = cache_dir if cache_dir.exists() else source.parent
    return os.access(target, os.W_OK)


def compile_sources(paths: list[Path]) -> list[Path]:
    """Write each module's ``.pyc`` into its ``__pycache__``; those that failed."""
    import compileall  # only when there is something to compile

    return [p for p in paths if not compileall.compile_file(str(p), quiet=1)]


def ensure_compiled(dirs: list[Path] | None = None) -> tuple[list[Path], list[Path]]:
    """Compile the stale modules this process may write; (compiled, left stale).

    Nothing is written under ``PYTHONDONTWRITEBYTECODE`` (``sys.dont_write_bytecode``):
    whoever set it does not want ``.pyc`` files; the stale ones are only reported.
    """
    stale = stale_sources(dirs)
    can = [] if sys.dont_write_bytecode else [s for s in stale if writable(s)]
    failed = set(compile_sources(can))
    compiled = [s for s in can if s not in failed]
    return compiled, [s for s in stale if s not in compiled]


def main() -> int:
    """``python -I -m huselet.bytecode``: compile the packages; 1 if a module is left stale."""
    dirs = package_dirs()
    compile_sources(stale_sources(dirs))
    left = stale_sources(dirs)
    for source in left:
        print(f"huselet.bytecode: no valid .pyc for {source}", file=sys.stderr)
    return 0 if not left else 1


if __name__ == "__main__":
    raise SystemExit(main())
