"""The layering promises, checked two ways.

* ``protocol/`` is sans-IO: it imports neither trio nor huselet.
* ``cache/`` is a library of its own: it never imports huselet.
* The worker SDK (``huselet/worker``) runs inside every sandbox: it imports
  nothing from the daemon side (no other ``huselet`` module, no trio, no
  daemon-only third-party package) — only the stdlib, ``protocol`` and ``cache``.
* No node-side module imports ``huselet.central`` (the scheduler), and a
  standalone daemon (the default config, no ``[scheduler]``) loads neither the
  fleet link nor the scheduler, nor what only they use (the scheduler
  protocol, httpx, and the click/pygments httpx's CLI pulls in): checked on
  the real ``huselet run``.

First over the source (every ``import`` statement, also those inside
functions), then in a fresh interpreter (what importing really pulls into
``sys.modules``, whichever indirect path brought it in).
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from daemon_harness import Daemon

from huselet.testing.probes import require_sandbox_host

REPO = Path(__file__).resolve().parents[1]

# Third-party packages only the daemon uses; none may reach the worker.
DAEMON_ONLY = ("trio", "h11", "httptools", "watchdog", "zstandard", "httpx", "outcome", "sniffio")


def imported_modules(path: Path, root: Path = REPO) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in ``path``; relative ones resolved."""
    tree = ast.parse(path.read_text(), str(path))
    package = ".".join(path.relative_to(root).with_suffix("").parts[:-1])
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                name = ".".join([*base, node.module] if node.module else base)
            else:
                name = node.module or ""
            found.append((node.lineno, name))
    return found


def violations(
    folder: str, forbidden: tuple[str, ...], allowed: tuple[str, ...] = (), root: Path = REPO
) -> list[str]:
    out = []
    for path in sorted((root / folder).rglob("*.py")):
        for line, name in imported_modules(path, root):
            top_match = any(name == f or name.startswith(f + ".") for f in forbidden)
            if top_match and not any(name == a or name.startswith(a + ".") for a in allowed):
                out.append(f"{path.relative_to(root)}:{line} imports {name}")
    return out


def test_protocol_source_imports_neither_trio_nor_huselet() -> None:
    assert violations("protocol", ("trio", "huselet")) == []


def test_cache_source_never_imports_huselet() -> None:
    assert violations("cache", ("huselet",)) == []


def test_worker_source_imports_nothing_from_the_daemon_side() -> None:
    forbidden = ("huselet", *DAEMON_ONLY)
    assert violations("huselet/worker", forbidden, allowed=("huselet.worker",)) == []


def test_the_node_side_never_imports_the_central_scheduler() -> None:
    # Importing any huselet.central module runs that package's __init__ (the
    # whole scheduler, etcd client, httpx): what both sides share lives outside
    # it (huselet/tls.py). Only the command line may start a scheduler.
    found = violations("huselet", ("huselet.central",))
    assert [v for v in found if not v.startswith(("huselet/central/", "huselet/cli.py:"))] == []


def test_the_source_check_sees_relative_and_nested_imports(tmp_path: Path) -> None:
    # The checker itself: a relative import resolves to its package, a nested
    # (function-level) import counts like a top-level one.
    (tmp_path / "protocol").mkdir()
    fake = tmp_path / "protocol" / "_contract_probe.py"
    fake.write_text("from ..huselet import x\n\ndef f():\n    import trio\n")
    assert violations("protocol", ("trio", "huselet"), root=tmp_path) == [
        "protocol/_contract_probe.py:1 imports huselet",
        "protocol/_contract_probe.py:4 imports trio",
    ]


SNAPSHOT = """
import importlib, json, pkgutil, sys
for target in sys.argv[1:]:
    module = importlib.import_module(target)
    if hasattr(module, "__path__") and target != "huselet":  # a package: all of it
        for info in pkgutil.walk_packages(module.__path__, target + "."):
            if not info.name.endswith("__main__"):  # importing it would run it
                importlib.import_module(info.name)
print(json.dumps(sorted(sys.modules)))
"""


def loaded_by(*targets: str) -> list[str]:
    """``sys.modules`` of a fresh interpreter after importing ``targets``."""
    out = subprocess.run(
        [sys.executable, "-c", SNAPSHOT, *targets],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)  # type: ignore[no-any-return]


def tops(modules: list[str], prefixes: tuple[str, ...]) -> list[str]:
    return [m for m in modules if any(m == p or m.startswith(p + ".") for p in prefixes)]


def test_importing_protocol_loads_neither_trio_nor_huselet() -> None:
    assert tops(loaded_by("protocol"), ("trio", "huselet")) == []


def test_importing_cache_never_loads_huselet() -> None:
    assert tops(loaded_by("cache"), ("huselet",)) == []


@pytest.mark.parametrize(
    "targets",
    [
        ("huselet.worker.sdk",),
        ("huselet.worker",),  # the package, as `python -m huselet.worker` loads it
        # What an image worker imports on top (lazily, in load_handler).
        ("huselet.worker.sdk", "cache.importer", "cache.reader"),
    ],
)
def test_the_worker_loads_nothing_from_the_daemon_side(targets: tuple[str, ...]) -> None:
    loaded = loaded_by(*targets)
    daemon_side = [m for m in tops(loaded, ("huselet",)) if m != "huselet"]
    daemon_side = [m for m in daemon_side if not m.startswith("huselet.worker")]
    assert daemon_side == []
    assert tops(loaded, DAEMON_ONLY) == []


def test_an_invocation_imports_neither_its_queue_nor_its_instance() -> None:
    # The buffer and the instance hold invocations; the invocation names what it
    # uses of them as Protocols, so there is no instance <-> invocation cycle,
    # not even one hidden under TYPE_CHECKING.
    imported = imported_modules(REPO / "huselet" / "dispatch" / "invocation.py")
    dispatch = [name for _, name in imported if name.startswith("huselet.dispatch.")]
    assert dispatch == ["huselet.dispatch.reasons"]


# Off the run path of a standalone daemon (issue 12: ~90 ms of its import and
# ~4 MB of its memory came through fleet.link -> huselet.central.tls).
FLEET_ONLY = ("huselet.central", "huselet.fleet", "protocol.delta", "httpx", "click", "pygments")


def default_config(root: Path) -> Path:
    """The shipped default config, as is but for a free port and private directories."""
    text = (REPO / "huselet" / "default.toml").read_text()
    edits = {
        'http = "127.0.0.1:8470"': 'http = "127.0.0.1:0"',
        'package = "examples/hello"': f'package = "{REPO}/huselet/examples/hello"',
        "[node]\n": f'[node]\nstate_dir = "{root}/state"\nrun_dir = "{root}/run"\n',
    }
    for old, new in edits.items():
        assert old in text, f"default.toml changed: {old!r} is gone; update this test"
        text = text.replace(old, new, 1)
    config = root / "huselet.toml"
    config.write_text(text)
    return config


def modules_imported(lines: list[str]) -> list[str]:
    """Module names from ``-X importtime`` lines (``import time: self | cumulative | name``)."""
    out = []
    for line in lines:
        if line.startswith("import time:") and not line.rstrip().endswith("imported package"):
            out.append(line.rsplit("|", 1)[1].strip())
    return out


def test_a_standalone_daemon_loads_nothing_of_the_fleet(
    short_tmp: Path, start_daemon: Callable[..., Daemon]
) -> None:
    # The real `huselet run` on the default config, served one request; every
    # module it imported on the way (PYTHONPROFILEIMPORTTIME is -X importtime;
    # the zygote runs `python -I`, so only the daemon reports).
    require_sandbox_host()
    daemon = start_daemon(default_config(short_tmp), env={"PYTHONPROFILEIMPORTTIME": "1"})
    assert daemon.invoke_ok("hello", {"name": "contract"})
    loaded = modules_imported(list(daemon.lines))
    assert "huselet.daemon" in loaded and "trio" in loaded  # the probe itself works
    assert tops(loaded, FLEET_ONLY) == []
