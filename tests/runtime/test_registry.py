"""The runtime registry (huselet.runtime): built-ins registered once, plugins by entry point."""

from __future__ import annotations

import tomllib
from pathlib import Path

from huselet.runtime import BUILTIN, available_runtimes

REPO = Path(__file__).resolve().parents[2]


def test_built_in_runtimes_are_registered_in_one_place() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    entry_points = project["project"].get("entry-points", {}).get("huselet.runtimes", {})
    # Not again as entry points of huselet's own package: one registration per runtime.
    assert not set(entry_points) & set(BUILTIN), entry_points
    assert set(BUILTIN) == {"process", "fork", "bwrap", "oci"}


def test_built_ins_come_first_and_resolve_to_their_classes() -> None:
    found = available_runtimes()
    assert list(found)[: len(BUILTIN)] == list(BUILTIN)
    assert {name: found[name] for name in BUILTIN} == BUILTIN
