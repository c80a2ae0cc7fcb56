"""Every benchmark script still starts: ``python bench/bench_X.py --help`` exits 0.

The benches are run by hand, rarely, so an API change that breaks one's
imports (a renamed module, a moved class) would otherwise surface only on the
next benchmark run. Each is run the documented way (the venv's python, the
script's path, from the repository root), so its module-level imports and its
argument parser run for real; mypy (tests/test_static_checks.py) checks what
the code does with them.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BENCHES = sorted((REPO / "bench").glob("bench_*.py"))


def test_benches_are_found() -> None:
    # A glob that matched nothing would make the test below vacuous.
    assert {"bench_invoke.py", "bench_fleet.py", "bench_cache.py"} <= {b.name for b in BENCHES}


@pytest.mark.parametrize("bench", BENCHES, ids=[b.stem for b in BENCHES])
def test_bench_imports_and_answers_help(bench: Path) -> None:
    # The timeout bounds a hang (a bench that ignored --help and started its
    # run), not a speed: --help takes well under a second here.
    result = subprocess.run(
        [sys.executable, str(bench.relative_to(REPO)), "--help"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, f"{bench.name} --help failed:\n{result.stderr}"
    assert result.stdout.startswith("usage:"), f"{bench.name} --help printed:\n{result.stdout}"
