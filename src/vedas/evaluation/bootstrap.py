"""Paired bootstrap over test questions (docs/design.md#bootstrap).

    d = paired_difference(correct_a, correct_b, resamples=10_000, seed=0)
    d["difference"], d["low"], d["high"]      # mean of b - a and its 95 % percentile interval

Two methods scored on the same questions give paired outcomes; their accuracy difference is
the mean of the per-question differences ``b_i - a_i``. The interval resamples the *questions*
(with replacement, ``n`` of ``n``) ``resamples`` times, takes the mean difference of each
resample and reports the 2.5th and 97.5th percentiles of those means (``numpy.quantile``'s
default linear interpolation). Pairing keeps the questions both methods get right or wrong out
of the spread, so it is much tighter than comparing two independent intervals. Seeded: the same
inputs and seed give the same interval.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

CHUNK = 1000
"""Resamples drawn per block (bounds memory at CHUNK × n indices)."""


def resample_means(values: Sequence[float], resamples: int, seed: int) -> np.ndarray:
    """The mean of ``values`` over ``resamples`` bootstrap resamples (indices from one seeded generator)."""
    v = np.asarray(values, dtype=np.float64)
    n = len(v)
    if n == 0:
        raise ValueError("bootstrap: no values to resample")
    if resamples < 1:
        raise ValueError(f"bootstrap: resamples must be ≥ 1, got {resamples}")
    rng = np.random.default_rng(seed)
    out = np.empty(resamples)
    for start in range(0, resamples, CHUNK):
        m = min(CHUNK, resamples - start)
        out[start : start + m] = v[rng.integers(0, n, size=(m, n))].mean(1)
    return out


def paired_difference(
    a: Sequence[float],
    b: Sequence[float],
    resamples: int = 10_000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, Any]:
    """Mean of ``b - a`` over paired questions and its bootstrap ``level`` interval.

    ``a`` and ``b`` hold one outcome per question (1/0 for correct/wrong), in the same order.
    """
    if len(a) != len(b):
        raise ValueError(f"bootstrap: paired outcomes differ in length ({len(a)} vs {len(b)})")
    if not 0 < level < 1:
        raise ValueError(f"bootstrap: level must be in (0, 1), got {level}")
    d = np.asarray(b, dtype=np.float64) - np.asarray(a, dtype=np.float64)
    means = resample_means(d, resamples, seed)
    tail = (1 - level) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return {
        "difference": float(d.mean()),
        "low": float(low),
        "high": float(high),
        "n": len(d),
        "level": level,
        "resamples": resamples,
        "seed": seed,
    }


def beyond(interval: dict[str, Any]) -> bool:
    """True when the interval excludes 0: the difference is beyond what resampling the questions gives."""
    return interval["low"] > 0 or interval["high"] < 0
