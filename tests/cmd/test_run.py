"""``huselet run``'s collector settings: what start-up made is frozen, and young
collections are rare enough that a start burst does not walk every instance's
objects again and again (bench_density measures the CPU it saves)."""

from __future__ import annotations

import subprocess
import sys

from huselet.cmd.run import GC_GEN0_THRESHOLD

PROBE = """
import gc
from huselet.cmd.run import tune_gc
import huselet.daemon  # what the daemon imports before it runs
before = gc.get_threshold()
tune_gc()
print(before[1], before[2], *gc.get_threshold(), gc.get_freeze_count(), gc.get_count()[0])
"""


def test_tune_gc_freezes_start_up_and_raises_only_the_young_threshold() -> None:
    # In a fresh interpreter: freezing is for the whole process.
    out = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, check=True, timeout=120
    ).stdout.split()
    gen1_before, gen2_before, gen0, gen1, gen2, frozen, young = map(int, out)
    assert gen0 == GC_GEN0_THRESHOLD > 700
    assert (gen1, gen2) == (gen1_before, gen2_before)
    assert frozen > 10_000  # the modules, classes and functions imported so far
    assert young < 100  # collected before freezing: nothing young was left
