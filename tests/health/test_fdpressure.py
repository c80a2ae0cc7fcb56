"""The descriptor loop's measurement against the real process: what it counts is
what /proc lists. (The loop's decisions are driven by scripted numbers in
test_pressure.py, next to the disk and memory loops.)"""

from __future__ import annotations

import os
from pathlib import Path

from huselet.health.fdpressure import measure_fds, open_fd_count


def test_measure_fds_counts_open_descriptors(tmp_path: Path) -> None:
    before = measure_fds()
    files = [open(tmp_path / f"f{i}", "w") for i in range(20)]  # noqa: SIM115
    try:
        during = measure_fds()
    finally:
        for f in files:
            f.close()
    assert during.open - before.open == 20
    assert during.limit > 0 and 0 < during.percent < 100


def test_open_fd_count_agrees_with_listing_the_directory() -> None:
    # Whichever way the kernel lets us count (the size of /proc/self/fd on
    # Linux 6.2+, a listing before), the figure is the listing's.
    assert open_fd_count() == len(os.listdir("/proc/self/fd")) - 1
