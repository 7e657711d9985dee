"""Paired intervals: over test questions (bootstrap) and over training runs (seed level) (docs/design.md#bootstrap).

    d = paired_difference(correct_a, correct_b, resamples=10_000, seed=0)
    d["difference"], d["low"], d["high"]      # mean of b - a and its 95 % percentile interval

Two methods scored on the same questions give paired outcomes; their accuracy difference is
the mean of the per-question differences ``b_i - a_i``. The interval resamples the *questions*
(with replacement, ``n`` of ``n``) ``resamples`` times, takes the mean difference of each
resample and reports the 2.5th and 97.5th percentiles of those means (``numpy.quantile``'s
default linear interpolation). Pairing keeps the questions both methods get right or wrong out
of the spread, so it is much tighter than comparing two independent intervals. Seeded: the same
inputs and seed give the same interval.

That interval holds the trained models fixed: it says nothing about another training run. A claim
about a *method* needs the run-to-run spread, which on the synthetic benchmark is 5–10× the
binomial error. :func:`seed_level` gives it: a paired t interval over training runs (one accuracy
per seed, both methods trained from the same seed), with the smallest difference the design
detects at 80 % power. Verdicts ("beyond the interval") follow the seed-level interval.

    s = seed_level(acc_a_per_seed, acc_b_per_seed)
    s["difference"], s["low"], s["high"], s["detectable_80"]

Runs can be nested: several latent-phase replicates (data-order seeds) continue from one trained
``cot`` per seed. :func:`nested_level` averages the replicates of each seed first and takes the
paired t over seeds (replicates that share a ``cot`` are not independent draws of the method), and
separates the spread of the difference within a ``cot`` (replicates) from the spread between
``cot`` seeds; :func:`seeds_needed` sizes a design from them.

    n = nested_level({(seed, rep): acc_a}, {(seed, rep): acc_b})
    n["difference"], n["low"], n["high"], n["sd_within"], n["sd_between"]
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
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


def seed_level(a: Sequence[float], b: Sequence[float], level: float = 0.95) -> dict[str, Any]:
    """The paired t interval of ``b - a`` over training runs: one accuracy per seed, paired by seed.

    Returns the mean difference, its ``level`` interval (Student's t with n − 1 degrees of
    freedom, ``scipy.stats.ttest_rel``), the per-seed differences, their standard deviation and
    ``detectable_80``: the smallest true difference a design of this many seeds and this spread
    finds at 80 % power, (t₁₋α/₂ + t₀.₈) · sd / √n.
    """
    from scipy import stats

    if len(a) != len(b):
        raise ValueError(f"seed_level: paired accuracies differ in length ({len(a)} vs {len(b)})")
    if len(a) < 2:
        raise ValueError(f"seed_level: needs at least 2 seeds, got {len(a)}")
    if not 0 < level < 1:
        raise ValueError(f"seed_level: level must be in (0, 1), got {level}")
    d = np.asarray(b, dtype=np.float64) - np.asarray(a, dtype=np.float64)
    n, mean, sd = len(d), float(d.mean()), float(d.std(ddof=1))
    if sd == 0:  # every run differs by the same amount: the t interval degenerates to that point
        low = high = mean
    else:
        ci = stats.ttest_rel(b, a).confidence_interval(confidence_level=level)
        low, high = float(ci.low), float(ci.high)
    t_crit = float(stats.t.ppf(1 - (1 - level) / 2, n - 1))
    detectable = (t_crit + float(stats.t.ppf(0.8, n - 1))) * sd / np.sqrt(n)
    return {
        "difference": mean,
        "low": low,
        "high": high,
        "seeds": n,
        "per_seed": [float(x) for x in d],
        "sd": sd,
        "detectable_80": float(detectable),
        "level": level,
    }


def beyond(interval: dict[str, Any]) -> bool:
    """True when the interval excludes 0 (for a seed-level interval: beyond run-to-run variation)."""
    return interval["low"] > 0 or interval["high"] < 0


def _in_order(keys: Any) -> list[Any]:
    """Seeds and runs in their natural order (seed 10 after seed 9), by ``repr`` where types are mixed."""
    try:
        return sorted(keys)
    except TypeError:
        return sorted(keys, key=repr)


def nested_level(
    a: Mapping[tuple[Hashable, Hashable], float],
    b: Mapping[tuple[Hashable, Hashable], float],
    level: float = 0.95,
) -> dict[str, Any] | None:
    """``b - a`` over runs keyed ``(seed, replicate)``: replicates nested in seeds.

    The interval is :func:`seed_level` over the seeds of the per-seed mean accuracies (each seed's
    replicates that both variants ran, averaged), so its degrees of freedom are seeds − 1, not runs − 1.
    Beside it: ``runs``, ``per_run`` (differences), ``sd_within`` (the pooled standard deviation of the
    difference between replicates of one seed; None without a seed of two or more replicates) and
    ``sd_between`` (the spread of the seeds' true differences: the method-of-moments estimate
    √max(0, var(seed means) − sd_within²/r̄), r̄ the mean replicates per seed; the plain SD of the seed
    means when ``sd_within`` is unknown). None with fewer than 2 seeds.
    """
    keys = _in_order(set(a) & set(b))
    seeds: dict[Hashable, list[tuple[Hashable, Hashable]]] = {}
    for k in keys:
        seeds.setdefault(k[0], []).append(k)
    if len(seeds) < 2:
        return None
    order = _in_order(seeds)
    mean_a = [float(np.mean([a[k] for k in seeds[s]])) for s in order]
    mean_b = [float(np.mean([b[k] for k in seeds[s]])) for s in order]
    out = seed_level(mean_a, mean_b, level)
    diffs = {s: np.asarray([b[k] - a[k] for k in seeds[s]], dtype=np.float64) for s in order}
    df_within = sum(len(d) - 1 for d in diffs.values())
    ss_within = sum(float(((d - d.mean()) ** 2).sum()) for d in diffs.values())
    sd_within = float(np.sqrt(ss_within / df_within)) if df_within else None
    reps_mean = float(np.mean([len(d) for d in diffs.values()]))
    var_means = out["sd"] ** 2
    var_between = var_means - (sd_within**2 / reps_mean if sd_within is not None else 0.0)
    return {
        **out,
        "runs": len(keys),
        "replicates": {str(s): len(seeds[s]) for s in order},
        "per_run": [float(b[k] - a[k]) for k in keys],
        "sd_within": sd_within,
        "df_within": df_within,
        "sd_between": float(np.sqrt(max(0.0, var_between))),
    }


def seeds_needed(
    sd_between: float,
    sd_within: float | None,
    replicates: int,
    delta: float,
    power: float = 0.8,
    limit: int = 1000,
) -> int | None:
    """The fewest seeds (each with ``replicates`` latent-phase replicates) whose paired t at the 95 %
    level finds a true difference ``delta`` with ``power``: the smallest n with
    (t₀.₉₇₅,ₙ₋₁ + t_power,ₙ₋₁) · √(sd_between² + sd_within²/replicates) / √n ≤ delta; None above ``limit``."""
    from scipy import stats

    sd = float(np.sqrt(sd_between**2 + (sd_within or 0.0) ** 2 / max(1, replicates)))
    if sd == 0:
        return 2
    for n in range(2, limit + 1):
        if (stats.t.ppf(0.975, n - 1) + stats.t.ppf(power, n - 1)) * sd / np.sqrt(n) <= delta:
            return n
    return None
