"""bench/resample.py: the round bootstrap's intervals cover what they should and only that."""

from __future__ import annotations

import random
import sys
from collections.abc import Mapping
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from resample import round_bootstrap


def _p99(xs: list[float]) -> float:
    return sorted(xs)[round(0.99 * (len(xs) - 1))]


def _ratio(samples: Mapping[str, list[float]]) -> dict[str, float]:
    return {"b/a": _p99(samples["b"]) / _p99(samples["a"])}


def _rounds(
    scale_b: float, n_rounds: int = 20, per_round: int = 200
) -> list[dict[str, list[float]]]:
    rng = random.Random(7)
    out = []
    for _ in range(n_rounds):
        drift = rng.uniform(0.7, 1.4)  # the machine's speed this round, shared by a and b
        a = [drift * rng.expovariate(1.0) for _ in range(per_round)]
        b = [scale_b * drift * rng.expovariate(1.0) for _ in range(per_round)]
        out.append({"a": a, "b": b})
    return out


def test_same_distribution_interval_covers_one() -> None:
    lo, hi = round_bootstrap(_rounds(1.0), _ratio, replicates=300)["b/a"]
    assert lo < 1.0 < hi


def test_a_real_difference_is_outside_the_interval() -> None:
    lo, hi = round_bootstrap(_rounds(1.5), _ratio, replicates=300)["b/a"]
    assert 1.0 < lo < 1.5 < hi


def test_seeded_reproducible() -> None:
    rounds = _rounds(1.0, n_rounds=5)
    assert round_bootstrap(rounds, _ratio, replicates=100, seed=3) == round_bootstrap(
        rounds, _ratio, replicates=100, seed=3
    )


def test_one_round_is_refused() -> None:
    with pytest.raises(ValueError, match="two rounds"):
        round_bootstrap(_rounds(1.0, n_rounds=1), _ratio)
