"""The repository's static checks, run as part of the suite so the README's one
test command (which CI runs) covers them: ruff lint (incl. the trio/async rules),
ruff's format check, and mypy --strict over the three packages and bench/.

Each runs the real tool from this venv over the real tree; a finding fails the
test with the tool's own report.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=600, check=False)


@pytest.mark.parametrize(
    "argv",
    [
        pytest.param(("ruff", "check", "--no-cache", "."), id="ruff-check"),
        pytest.param(("ruff", "format", "--check", "--no-cache", "."), id="ruff-format"),
        pytest.param(("mypy",), id="mypy-strict"),
    ],
)
def test_static_check_passes(argv: tuple[str, ...]) -> None:
    tool = BIN / argv[0]
    if not tool.exists():
        pytest.fail(f"{tool} is missing: run `sh scripts/bootstrap.sh test`")
    result = _run(str(tool), *argv[1:])
    assert result.returncode == 0, f"{' '.join(argv)} failed:\n{result.stdout}\n{result.stderr}"


def test_mypy_runs_strict() -> None:
    # The check above is only as strong as its configuration.
    import tomllib

    mypy = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["mypy"]
    assert mypy.get("strict") is True
    # ``files``, not ``packages`` (mypy takes only one of the two): bench/ is a
    # directory of scripts, not a package, and is checked as such: each file a
    # top-level module, as ``python bench/X.py`` imports its neighbours.
    assert set(mypy["files"]) == {"huselet", "protocol", "cache", "bench"}
    assert "packages" not in mypy and "modules" not in mypy
    # A bench/__init__.py would rename them bench.X, and ``from loadgen import``
    # would then resolve to nothing: silently Any under ignore_missing_imports.
    assert not (REPO / "bench" / "__init__.py").exists()
