"""A package's ``requirements.txt``, installed with pip into a tree the packer puts in its image.

:func:`install_requirements` turns ``<package>/requirements.txt`` into an
installed site tree (``pip install --target``) for *this node's* interpreter
and platform — the interpreter the workers run — and returns it; the packer
stores it in the image under :data:`cache.importer.DEPS_DIR`, which workers
put on the import path right after the function's own code.

- **Wheels only** (``--only-binary :all:``) unless ``cache.allow_sdist``: a
  pack never runs arbitrary ``setup.py`` code or needs a compiler by default.
- **A wheel cache** under ``<state>/cache/wheels``: pip installs from it with
  ``--no-index`` first and fetches into it (``pip wheel``) only what is
  missing, so a re-pack is fast and works offline after the first one.
- **Installed trees are cached** under ``<state>/cache/deps/<key>``, keyed by
  the requirements files' bytes, the interpreter and the platform: an
  unchanged ``requirements.txt`` never runs pip again. Pin versions (hashes
  welcome): an unpinned line resolves once and stays as resolved.
- **Bounded**: pip runs as a child process with a deadline (killed with its
  process group past it) and only the tail of its output is kept; progress
  (elapsed, bytes and files fetched and installed) is reported every few
  seconds. Blocking: the daemon calls this from a worker thread.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import signal
import subprocess
import sys
import sysconfig
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cache.errors import BuildError

REQUIREMENTS = "requirements.txt"
MAX_REQUIREMENTS_BYTES = 1 << 20  # a requirements file is text, not a data set
MAX_INCLUDED_FILES = 32  # -r/-c files followed for the cache key
MAX_DEPS_TREES = 16  # installed trees kept (least recently used go first)
OUTPUT_LINES = 40  # tail of pip's output kept for the error message
MAX_LINE = 400
PROGRESS_INTERVAL_S = 2.0
POLL_S = 0.2  # how soon a cancelled pack kills pip
_INCLUDE = re.compile(r"^\s*(?:-r|-c|--requirement|--constraint)(?:\s+|=)(\S+)")

Progress = Callable[[dict[str, Any]], None]


class DependencyError(BuildError):
    """``requirements.txt`` could not be installed; the message says why (pip's own words)."""


@dataclass(frozen=True, slots=True)
class DependencyOptions:
    cache_dir: Path  # <state_dir>/cache: holds wheels/ and deps/
    allow_sdist: bool = False
    timeout_s: float = 600.0
    python: str = sys.executable  # the workers' interpreter: wheels must fit it


def requirements_key(src: Path, options: DependencyOptions) -> str | None:
    """What an installed tree depends on, hashed; None when ``src`` has no requirements.txt."""
    first = src / REQUIREMENTS
    if not first.is_file():
        return None
    h = hashlib.sha256()
    h.update(f"{sys.version}\0{sysconfig.get_platform()}\0{options.allow_sdist}\0".encode())
    h.update(f"{sys.implementation.cache_tag}\0{options.python}\0".encode())
    pending, seen = [first], set()
    while pending:
        path = pending.pop()
        if path in seen:
            continue
        seen.add(path)
        if len(seen) > MAX_INCLUDED_FILES:
            raise DependencyError(f"{REQUIREMENTS} includes more than {MAX_INCLUDED_FILES} files")
        data = _read_bounded(path)
        h.update(f"{path.relative_to(src) if path.is_relative_to(src) else path}\0".encode())
        h.update(hashlib.sha256(data).digest())
        for line in data.decode("utf-8", "replace").splitlines():
            match = _INCLUDE.match(line)
            if match:
                pending.append((path.parent / match.group(1)).resolve())
    return h.hexdigest()


def install_requirements(
    src: Path,
    options: DependencyOptions,
    progress: Progress | None = None,
    cancel: threading.Event | None = None,
) -> Path | None:
    """The installed tree for ``src/requirements.txt`` (cached), or None without one.

    Raises :class:`DependencyError` with pip's last lines when pip fails or
    runs past the deadline, or soon after ``cancel`` is set (pip is killed).
    """
    key = requirements_key(src, options)
    if key is None:
        return None
    deps_root = options.cache_dir / "deps"
    tree = deps_root / key
    if tree.is_dir():
        os.utime(tree)  # recently used: trimmed last
        return tree
    wheels = options.cache_dir / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    deps_root.mkdir(parents=True, exist_ok=True)
    temp = deps_root / f".{key[:16]}.{os.getpid()}.{os.urandom(4).hex()}.tmp"
    started = time.monotonic()
    report = _Reporter(progress, started, wheels, temp)
    report.cancel = cancel
    try:
        # --isolated: no index or find-links from pip's config or environment,
        # so this first attempt really uses only the wheel cache (offline).
        install = [*_pip(options), "install", "--isolated", "--target", str(temp)]
        install += ["--no-compile"]
        install += ["--no-warn-script-location", "--no-index", "--find-links", str(wheels)]
        install += ["--only-binary", ":all:"] if not options.allow_sdist else []
        install += ["-r", str(src / REQUIREMENTS)]
        offline = _run(install, src, options, report, "install from the wheel cache", started)
        if offline is not None:
            # Something is not in the wheel cache yet: fetch it (wheels only unless
            # sdists are allowed, in which case pip builds them into wheels here).
            shutil.rmtree(temp, ignore_errors=True)
            fetch = [*_pip(options), "wheel", "--wheel-dir", str(wheels)]
            fetch += ["--find-links", str(wheels)]
            fetch += ["--only-binary", ":all:"] if not options.allow_sdist else []
            fetch += ["-r", str(src / REQUIREMENTS)]
            failure = _run(fetch, src, options, report, "fetch", started)
            if failure is not None:
                raise DependencyError(f"pip could not fetch the requirements: {failure}")
            shutil.rmtree(temp, ignore_errors=True)
            failure = _run(install, src, options, report, "install", started)
            if failure is not None:
                raise DependencyError(f"pip could not install the requirements: {failure}")
        _drop_bytecode(temp)
        _make_public(temp)
        try:
            os.rename(temp, tree)
        except OSError:
            if not tree.is_dir():
                raise
            shutil.rmtree(temp, ignore_errors=True)  # another pack finished first
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise
    report.emit("installed", final=True, tree=tree)
    _trim(deps_root, keep=tree)
    return tree


# -- pip as a bounded child -------------------------------------------------------------


def _pip(options: DependencyOptions) -> list[str]:
    return [options.python, "-m", "pip", "--disable-pip-version-check", "--no-input"]


def _run(
    argv: list[str],
    cwd: Path,
    options: DependencyOptions,
    report: _Reporter,
    phase: str,
    started: float,
) -> str | None:
    """Run pip; None on success, else the tail of its output. Raises on the deadline."""
    if report.cancel is not None and report.cancel.is_set():
        raise DependencyError(f"pip was not started ({phase}): packing cancelled")
    env = dict(os.environ, PIP_PROGRESS_BAR="off", PYTHONDONTWRITEBYTECODE="1")
    try:
        proc = subprocess.Popen(
            argv,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # a deadline kills pip and whatever it started
        )
    except OSError as exc:
        raise DependencyError(f"cannot run pip with {options.python}: {exc.strerror}") from None
    tail: deque[str] = deque(maxlen=OUTPUT_LINES)
    reader = threading.Thread(target=_collect, args=(proc, tail), daemon=True)
    reader.start()
    deadline = started + options.timeout_s
    next_report = time.monotonic() + PROGRESS_INTERVAL_S
    try:
        while True:
            try:
                proc.wait(timeout=max(0.0, min(POLL_S, deadline - time.monotonic())))
                break
            except subprocess.TimeoutExpired:
                if report.cancel is not None and report.cancel.is_set():
                    raise DependencyError(f"pip was stopped ({phase}): packing cancelled") from None
                if time.monotonic() >= deadline:
                    raise DependencyError(
                        f"pip did not finish within {options.timeout_s:g} s ({phase}); "
                        f"last output: {_last(tail)}"
                    ) from None
                if time.monotonic() >= next_report:
                    next_report += PROGRESS_INTERVAL_S
                    report.emit(phase, last=tail[-1] if tail else "")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        reader.join(5)
    if proc.returncode == 0:
        return None
    if "No module named pip" in "".join(tail):
        raise DependencyError(f"pip is not installed for {options.python}; install it to pack")
    return _last(tail)


def _collect(proc: subprocess.Popen[bytes], tail: deque[str]) -> None:
    assert proc.stdout is not None
    for raw in proc.stdout:  # read to EOF so pip never blocks on a full pipe
        line = raw.decode("utf-8", "replace").rstrip()
        if line:
            tail.append(line[:MAX_LINE])


def _last(tail: deque[str]) -> str:
    lines = [line for line in tail if not line.startswith(("  ", "Looking in"))]
    return " | ".join(lines[-6:]) or "(no output)"


class _Reporter:
    """Progress while pip runs: elapsed, and bytes/files in the wheel cache and the tree."""

    def __init__(self, progress: Progress | None, started: float, wheels: Path, tree: Path) -> None:
        self.progress, self.started, self.wheels, self.tree = progress, started, wheels, tree
        self.cancel: threading.Event | None = None

    def emit(
        self, phase: str, *, final: bool = False, tree: Path | None = None, **extra: Any
    ) -> None:
        if self.progress is None:
            return
        wheel_files, wheel_bytes = _usage(self.wheels)
        files, size = _usage(tree or self.tree)
        self.progress(
            {
                "phase": phase,
                "elapsed_s": round(time.monotonic() - self.started, 1),
                "wheel_cache_files": wheel_files,
                "wheel_cache_bytes": wheel_bytes,
                "installed_files": files,
                "installed_bytes": size,
                "done": final,
                **extra,
            }
        )


def _usage(root: Path) -> tuple[int, int]:
    files = size = 0
    for dirpath, _, names in os.walk(root):
        for name in names:
            try:
                size += os.lstat(os.path.join(dirpath, name)).st_size
                files += 1
            except OSError:
                pass
    return files, size


# -- housekeeping -----------------------------------------------------------------------


def _read_bounded(path: Path) -> bytes:
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_REQUIREMENTS_BYTES + 1)
    except OSError as exc:
        raise DependencyError(f"cannot read {path.name}: {exc.strerror}") from None
    if len(data) > MAX_REQUIREMENTS_BYTES:
        raise DependencyError(f"{path.name} is larger than {MAX_REQUIREMENTS_BYTES} bytes")
    return data


def _drop_bytecode(tree: Path) -> None:
    # The packer compiles its own unchecked-hash pycs; stray ones would only differ.
    for dirpath, dirnames, _ in os.walk(tree):
        if "__pycache__" in dirnames:
            shutil.rmtree(os.path.join(dirpath, "__pycache__"), ignore_errors=True)
            dirnames.remove("__pycache__")


def _make_public(tree: Path) -> None:
    """Give the installed tree world-readable modes, whatever the daemon's umask.

    pip writes with the daemon's umask (the unit's ``UMask=0027`` makes files
    0640), and the packer refuses files others cannot read, since a private
    file in a user's tree must not become readable to every instance. This tree
    is ours, built from public wheels: nothing in it is private.
    """
    for dirpath, dirnames, filenames in os.walk(tree):
        for name in dirnames:
            path = os.path.join(dirpath, name)
            if not os.path.islink(path):
                os.chmod(path, os.stat(path).st_mode | 0o755)
        for name in filenames:
            path = os.path.join(dirpath, name)
            if not os.path.islink(path):
                os.chmod(path, os.stat(path).st_mode | 0o644)


def _trim(deps_root: Path, keep: Path) -> None:
    trees = []
    for entry in deps_root.iterdir():
        if entry.name.startswith("."):
            continue
        try:
            trees.append((entry.stat().st_mtime, entry))
        except OSError:
            pass
    trees.sort()
    for _, tree in trees[: max(0, len(trees) - MAX_DEPS_TREES)]:
        if tree != keep:
            shutil.rmtree(tree, ignore_errors=True)
