"""Confidence intervals for a benchmark's ratios, by resampling whole rounds.

A pooled p99 over several rounds carries two errors: the sampling error of its
~1 % tail, and the machine's drift between phases (on a shared VM one phase's
p50 can be twice another's, same code, same condition). A ratio of two pooled
p99s with no interval says nothing about either. :func:`round_bootstrap` draws
the rounds again with replacement (a block bootstrap: every condition of a
drawn round comes along together, so drift shared within a round stays paired),
pools each condition's samples over the drawn rounds, and takes each ratio again;
the interval is the middle ``level`` of those replicates. Rounds, not single
samples, are the unit because samples within a phase are not independent (one
stall of the machine delays several requests in a row).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence

# condition -> that round's samples
Round = Mapping[str, Sequence[float]]
# pooled samples per condition -> named ratios
Ratios = Callable[[Mapping[str, list[float]]], dict[str, float]]


def round_bootstrap(
    rounds: Sequence[Round],
    ratios: Ratios,
    *,
    replicates: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> dict[str, tuple[float, float]]:
    """Each ratio's ``level`` interval over ``replicates`` resamplings of ``rounds``.

    Seeded, so a report can be reproduced from its samples."""
    if len(rounds) < 2:
        raise ValueError("an interval needs at least two rounds")
    rng = random.Random(seed)
    names = list(rounds[0])
    drawn: dict[str, list[float]] = {}
    for _ in range(replicates):
        picks = [rounds[rng.randrange(len(rounds))] for _ in rounds]
        pooled = {name: [x for r in picks for x in r[name]] for name in names}
        for key, value in ratios(pooled).items():
            drawn.setdefault(key, []).append(value)
    tail = (1 - level) / 2
    out = {}
    for key, values in drawn.items():
        values.sort()
        lo = values[int(tail * (len(values) - 1))]
        hi = values[round((1 - tail) * (len(values) - 1))]
        out[key] = (lo, hi)
    return out
