"""The read-only filesystem view of one function, built in a private mount namespace.

The new root is a small tmpfs holding only bind mounts, all read-only:

- the Python installation and every directory the running interpreter
  imports from (``sys.prefix``, ``sys.path``, and the package directories of
  already-imported modules that live elsewhere, e.g. an editable install);
- the function's own package directory (and code image, if any) — never
  another function's, never the daemon's run directory or its sockets;
- a handful of ``/etc`` files libraries expect (time zone, CA certificates,
  passwd/group), plus whatever the operator lists in ``ro_paths``;
- ``/dev/{null,zero,full,random,urandom}``, a ``/proc`` and an empty ``/tmp``.

Then ``pivot_root`` into it and detach the old root, so nothing outside the
list is reachable by any path. Instances mount their own private ``/tmp`` (and
``/proc`` of their PID namespace) over these.

Must run as root in a fresh mount namespace (see :mod:`huselet.sandbox.confine`).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from huselet.sandbox import linux

ETC_DEFAULTS = (
    "/etc/localtime",
    "/etc/ssl",
    "/etc/ca-certificates",
    "/etc/passwd",
    "/etc/group",
    "/etc/nsswitch.conf",
    "/etc/hosts",
    "/etc/mime.types",
)
DEVICES = ("null", "zero", "full", "random", "urandom")
# Top-level directories that merged-/usr systems keep as symlinks into /usr.
USR_LINKS = ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")


@dataclass(frozen=True)
class Bind:
    source: str
    target: str


def _covered(path: str, roots: Iterable[str]) -> bool:
    return any(path == r or path.startswith(r.rstrip("/") + "/") for r in roots)


def python_paths(packages: Iterable[str] | None = None) -> list[str]:
    """Directories this interpreter loads code from, minimal (no path inside another).

    ``packages``: consider only these top-level packages among the imported
    modules (a daemon computing the view for a worker it will exec, rather
    than a zygote describing itself), and only ``sys.path`` entries inside
    the Python installation or the virtual environment.
    """
    prefixes = ["/usr", sys.base_prefix, sys.base_exec_prefix, sys.prefix, sys.exec_prefix]
    candidates = list(prefixes)
    for entry in sys.path:
        if entry and os.path.isdir(entry) and (packages is None or _covered(entry, prefixes)):
            candidates.append(entry)
    for name, module in list(sys.modules.items()):
        # Packages found by path-less finders (editable installs) live outside
        # sys.path. Walk up from any loaded module to its top-level package:
        # the top-level module object itself may be a namespace without a file.
        file = getattr(module, "__file__", None)
        if not isinstance(file, str) or not os.path.isabs(file):
            continue
        if packages is not None and name.partition(".")[0] not in packages:
            continue
        path = os.path.dirname(file) if os.path.basename(file).startswith("__init__.") else file
        for _ in range(name.count(".")):
            path = os.path.dirname(path)
        candidates.append(path)
    chosen: list[str] = []
    for path in sorted({os.path.realpath(p) for p in candidates if os.path.exists(p)}, key=len):
        if not _covered(path, chosen):
            chosen.append(path)
    return chosen


def plan_binds(
    package: str, extra: Iterable[str], *, packages: Iterable[str] | None = None
) -> list[Bind]:
    paths = python_paths(packages)
    wanted = [package, *ETC_DEFAULTS, *extra]
    for path in wanted:
        real = os.path.realpath(path)
        if real == "/":
            continue  # an image-only function's working dir: never the whole host
        if os.path.exists(real) and not _covered(real, paths):
            paths.append(real)
    return [Bind(p, p) for p in paths]


def _mkdirs(path: str) -> None:
    os.makedirs(path, mode=0o755, exist_ok=True)


def _bind_ro(source: str, target: str, *, devices: bool = False) -> None:
    if os.path.isdir(source):
        _mkdirs(target)
    else:
        _mkdirs(os.path.dirname(target))
        if not os.path.exists(target):
            with open(target, "w"):
                pass
    linux.mount(source, target, None, linux.MS_BIND | linux.MS_REC)
    flags = linux.MS_REMOUNT | linux.MS_BIND | linux.MS_RDONLY | linux.MS_NOSUID
    if not devices:
        flags |= linux.MS_NODEV
    linux.mount(None, target, None, flags)


TMP = "/tmp"
SCRATCH = "/.tmp-next"  # where an instance assembles its private /tmp before moving it


def under_tmp(binds: list[Bind]) -> list[str]:
    """Bind targets inside /tmp: an instance's private /tmp must show them again."""
    return [b.target for b in binds if b.target.startswith(TMP + "/")]


def build(staging: str, binds: list[Bind], *, tmp_size_mb: int = 16) -> None:
    """Assemble the view under ``staging`` and make it the root of this mount namespace."""
    # Nothing we mount may propagate back to the host's namespace.
    linux.mount(None, "/", None, linux.MS_REC | linux.MS_PRIVATE)
    linux.mount("tmpfs", staging, "tmpfs", linux.MS_NOSUID | linux.MS_NODEV, "mode=0755,size=4m")
    # /tmp first: a package that lives under /tmp is bound on top of it below.
    _mkdirs(staging + TMP)
    linux.mount(
        "tmpfs",
        staging + TMP,
        "tmpfs",
        linux.MS_NOSUID | linux.MS_NODEV,
        f"mode=1777,size={tmp_size_mb}m",
    )
    _mkdirs(staging + SCRATCH)
    for bind in sorted(binds, key=lambda b: len(b.target)):
        _bind_ro(bind.source, staging + bind.target)
    for link in USR_LINKS:
        if os.path.islink(link):
            os.symlink(os.readlink(link), staging + link)
        elif os.path.isdir(link) and not _covered(link, [b.target for b in binds]):
            _bind_ro(link, staging + link)
    dev = staging + "/dev"
    _mkdirs(dev)
    for name in DEVICES:
        _bind_ro(f"/dev/{name}", f"{dev}/{name}", devices=True)
    for name, target in (
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
        ("shm", TMP),
    ):
        os.symlink(target, f"{dev}/{name}")
    _mkdirs(staging + "/proc")
    # hidepid: the zygote (host PID namespace, function code) sees only its own
    # processes, not the daemon's or other functions' command lines.
    linux.mount(
        "proc",
        staging + "/proc",
        "proc",
        linux.MS_NOSUID | linux.MS_NODEV | linux.MS_NOEXEC,
        "hidepid=invisible",
    )
    old = staging + "/.oldroot"
    _mkdirs(old)
    linux.pivot_root(staging, old)
    os.chdir("/")
    linux.umount2("/.oldroot", linux.MNT_DETACH)
    os.rmdir("/.oldroot")
    readonly = linux.MS_REMOUNT | linux.MS_BIND | linux.MS_RDONLY | linux.MS_NOSUID | linux.MS_NODEV
    linux.mount(None, "/", None, readonly)


def private_tmp(size_mb: int, keep: list[str]) -> None:
    """Mount a fresh /tmp (in an instance's own mount namespace), keeping ``keep`` visible."""
    for _what, call, args in private_tmp_steps(size_mb, keep):
        call(*args)


def private_tmp_steps(size_mb: int, keep: list[str]) -> list[tuple[str, Any, tuple[Any, ...]]]:
    """:func:`private_tmp` as calls with their arguments ready (built once, in the zygote).

    The new tmpfs is filled at a scratch mount point first — bind mounts of
    the kept paths, still read-only — and then moved over /tmp in one step.
    Whether a kept path is a directory is decided here: the zygote sees the
    same tree its instances will.
    """
    flags = linux.MS_NOSUID | linux.MS_NODEV
    data = f"mode=1777,size={size_mb}m"
    if not keep:
        return [("tmp", linux.prepared_mount("tmpfs", TMP, "tmpfs", flags, data), ())]
    steps: list[tuple[str, Any, tuple[Any, ...]]] = [
        ("tmp", linux.prepared_mount("tmpfs", SCRATCH, "tmpfs", flags, data), ())
    ]
    made: set[str] = set()
    for path in sorted(keep, key=len):
        target = SCRATCH + path[len(TMP) :]
        is_dir = os.path.isdir(path)
        parent = target if is_dir else os.path.dirname(target)
        parts = parent[len(SCRATCH) :].split("/")
        for depth in range(2, len(parts) + 1):  # parts[0] is "": SCRATCH itself exists
            directory = SCRATCH + "/".join(parts[:depth])
            if directory not in made:
                made.add(directory)
                steps.append((f"tmp: {directory}", _ensure_dir, (os.fsencode(directory),)))
        if not is_dir:
            steps.append((f"tmp: {target}", _touch, (os.fsencode(target),)))
        bind = linux.prepared_mount(path, target, None, linux.MS_BIND | linux.MS_REC)
        steps.append((f"tmp: {path}", bind, ()))
    steps.append(("tmp", linux.prepared_mount(SCRATCH, TMP, None, linux.MS_MOVE), ()))
    return steps


def _ensure_dir(path: bytes) -> None:
    try:
        os.mkdir(path, 0o755)
    except FileExistsError:
        pass  # inside a kept directory bound above: it is there already


def _touch(path: bytes) -> None:
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o666))
