"""PROTOCOL.md §15 is real: the reference machines still produce its frames byte for byte."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

from protocol.examples import worked_example

SPEC = Path(__file__).resolve().parents[2] / "protocol" / "PROTOCOL.md"


def test_the_worked_example_frames_match_the_specification() -> None:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        worked_example.main()
    produced = [line for line in out.getvalue().splitlines() if line.strip()]
    section = SPEC.read_text().split("## 15. Worked example", 1)[1]
    block = section.split("```", 2)[1].splitlines()
    hex_lines = [line for line in produced if line.lstrip().startswith("hex (")]
    assert len(hex_lines) >= 7
    assert [line for line in block if line.strip()] == produced
