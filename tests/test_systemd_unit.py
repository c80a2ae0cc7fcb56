"""The unit's hardening (issue 11, finding 10): ``systemd-analyze security`` rates
it 5.0 or better, and every item it still flags is explained by a comment."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

UNIT = Path(__file__).resolve().parents[1] / "systemd" / "huselet.service"
MAX_EXPOSURE = 5.0


def _analyze() -> str:
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed on this host")
    out = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", "--no-pager", str(UNIT)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if "Overall exposure level" not in out.stdout:
        pytest.skip(f"this systemd-analyze cannot rate a unit file offline: {out.stderr[:200]}")
    return out.stdout


def test_unit_exposure_is_at_most_five() -> None:
    text = _analyze()
    match = re.search(r"Overall exposure level for \S+: ([0-9.]+)", text)
    assert match, text[-500:]
    assert float(match.group(1)) <= MAX_EXPOSURE, text


def _token(item: str) -> str:
    """What a comment must name to explain a flagged item."""
    setting, _, value = item.partition("=")
    value = value.lstrip("~")
    if setting == "CapabilityBoundingSet":
        return re.match(r"CAP_[A-Z]*", value).group(0)  # type: ignore[union-attr]
    if setting == "SystemCallFilter":
        return value  # e.g. @resources
    if setting == "RestrictAddressFamilies":
        return re.match(r"AF_[A-Z]*", value).group(0)  # type: ignore[union-attr]
    return setting


def test_every_flagged_item_has_a_comment_saying_why() -> None:
    text = _analyze()
    comments = "\n".join(
        line for line in UNIT.read_text().splitlines() if line.lstrip().startswith("#")
    )
    flagged = [line.split()[1] for line in text.splitlines() if line.startswith("✗")]
    assert flagged
    missing = [item for item in flagged if _token(item) not in comments]
    assert not missing, f"flagged without a comment naming it: {missing}"
