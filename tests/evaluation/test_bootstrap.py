"""The paired bootstrap interval against the exact bootstrap distribution, enumerated by brute force."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from vedas.evaluation import bootstrap


def _exact_quantile(a: list[float], b: list[float], q: float) -> float:
    """The q-quantile of the exact bootstrap distribution: every one of the n^n resamples, equally likely.

    Returned as the smallest resample mean whose cumulative probability reaches q (the distribution is
    discrete; the case below keeps q well away from any step, where a sampled quantile could straddle two).
    """
    d = [y - x for x, y in zip(a, b)]
    n = len(d)
    means = sorted(sum(d[i] for i in idx) / n for idx in itertools.product(range(n), repeat=n))
    cdf = np.arange(1, len(means) + 1) / len(means)
    return means[int(np.searchsorted(cdf, q))]


def test_interval_equals_the_enumerated_bootstrap_distribution() -> None:
    a = [1, 0, 1, 1, 0, 1]
    b = [1, 1, 1, 0, 1, 1]  # per-question differences 0, +1, 0, -1, +1, 0
    d = [y - x for x, y in zip(a, b)]
    n = len(d)
    means = sorted(sum(d[i] for i in idx) / n for idx in itertools.product(range(n), repeat=n))
    m = np.array(means)
    for q in (0.025, 0.975):  # both quantiles sit on an atom well away from its CDF step's edges
        atom = _exact_quantile(a, b, q)
        assert (m < atom).mean() < q - 0.005 and (m <= atom).mean() > q + 0.005
    got = bootstrap.paired_difference(a, b, resamples=40_000, seed=3)
    assert got["difference"] == pytest.approx(1 / 6)
    assert got["low"] == pytest.approx(_exact_quantile(a, b, 0.025), abs=1e-9)
    assert got["high"] == pytest.approx(_exact_quantile(a, b, 0.975), abs=1e-9)
    assert bootstrap.beyond(got) is False  # the interval holds 0 here


def test_fixed_seed_matches_an_independent_loop_implementation() -> None:
    rng = np.random.default_rng(7)
    a, b = rng.integers(0, 2, 37).tolist(), rng.integers(0, 2, 37).tolist()
    got = bootstrap.paired_difference(a, b, resamples=2500, seed=11)
    # reference: the same seeded index draws (blocks of CHUNK rows), means and quantiles by hand
    draw = np.random.default_rng(11)
    idx = np.concatenate([draw.integers(0, 37, size=(m, 37)) for m in (1000, 1000, 500)])
    means = sorted(sum(b[i] - a[i] for i in row) / 37 for row in idx.tolist())

    def linear(q: float) -> float:  # numpy's default "linear" quantile, written out
        pos = q * (len(means) - 1)
        lo = int(pos)
        return means[lo] + (pos - lo) * (means[min(lo + 1, len(means) - 1)] - means[lo])

    assert got["low"] == pytest.approx(linear(0.025), abs=1e-12)
    assert got["high"] == pytest.approx(linear(0.975), abs=1e-12)
    assert got == bootstrap.paired_difference(
        a, b, resamples=2500, seed=11
    )  # seeded: same inputs, same interval


def test_bad_inputs_name_the_problem() -> None:
    with pytest.raises(ValueError, match="differ in length"):
        bootstrap.paired_difference([1, 0], [1])
    with pytest.raises(ValueError, match="no values"):
        bootstrap.paired_difference([], [])
    with pytest.raises(ValueError, match="level"):
        bootstrap.paired_difference([1], [0], level=1.0)


def test_seed_level_interval_equals_the_hand_computed_paired_t() -> None:
    """Three runs per method, paired by seed: Student's t with 2 degrees of freedom, by hand."""
    a, b = [0.60, 0.70, 0.80], [0.65, 0.80, 0.84]
    d = [0.05, 0.10, 0.04]
    mean = sum(d) / 3
    sd = (sum((x - mean) ** 2 for x in d) / 2) ** 0.5
    t975, t80 = 4.302652729, 1.060660172  # t quantiles, 2 degrees of freedom (printed tables)
    s = bootstrap.seed_level(a, b)
    assert s["difference"] == pytest.approx(mean)
    assert s["low"] == pytest.approx(mean - t975 * sd / 3**0.5)
    assert s["high"] == pytest.approx(mean + t975 * sd / 3**0.5)
    assert s["detectable_80"] == pytest.approx((t975 + t80) * sd / 3**0.5)
    assert s["per_seed"] == pytest.approx(d) and s["seeds"] == 3
    # every seed better, yet the interval spans 0: three runs cannot tell it from run-to-run variation
    assert not bootstrap.beyond(s)
    # the same mean difference, run to run steadier: beyond
    assert bootstrap.beyond(bootstrap.seed_level(a, [0.66, 0.76, 0.86]))


def test_seed_level_refuses_what_it_cannot_compute() -> None:
    with pytest.raises(ValueError, match="at least 2 seeds"):
        bootstrap.seed_level([0.5], [0.6])
    with pytest.raises(ValueError, match="differ in length"):
        bootstrap.seed_level([0.5, 0.6], [0.6])
    same = bootstrap.seed_level([0.5, 0.6], [0.6, 0.7])  # identical differences: a point interval
    assert same["low"] == same["high"] == pytest.approx(0.1)


def test_nested_level_averages_replicates_before_the_t_over_seeds() -> None:
    """Runs (seed, replicate): differences 2, 4 | 6 | 10, 12 points. By hand: seed means 3, 6, 11;
    their paired t has 2 degrees of freedom (not 4: replicates of one cot are not independent runs);
    within a seed the difference varies by SD √2 (pooled over the two seeds that have replicates)."""
    a = {(0, 0): 0.50, (0, 1): 0.50, (1, 0): 0.50, (2, 0): 0.50, (2, 1): 0.50, (3, 0): 0.9}
    b = {(0, 0): 0.52, (0, 1): 0.54, (1, 0): 0.56, (2, 0): 0.60, (2, 1): 0.62}  # seed 3: only a ran
    means = [0.03, 0.06, 0.11]
    mean = sum(means) / 3
    sd = (sum((x - mean) ** 2 for x in means) / 2) ** 0.5
    t975 = 4.302652729
    n = bootstrap.nested_level(a, b)
    assert n is not None
    assert n["difference"] == pytest.approx(mean) and n["seeds"] == 3 and n["runs"] == 5
    assert n["low"] == pytest.approx(mean - t975 * sd / 3**0.5)
    assert n["high"] == pytest.approx(mean + t975 * sd / 3**0.5)
    assert n["per_seed"] == pytest.approx(means)
    assert n["sd_within"] == pytest.approx(0.02**0.5 / 10) and n["df_within"] == 2
    reps_mean = 5 / 3
    assert n["sd_between"] == pytest.approx((sd**2 - 0.0002 / reps_mean) ** 0.5)
    assert n["replicates"] == {"0": 2, "1": 1, "2": 2}
    assert bootstrap.nested_level({(0, 0): 0.5, (0, 1): 0.6}, {(0, 0): 0.6, (0, 1): 0.7}) is None  # one seed


def test_nested_level_lists_seeds_in_numeric_order() -> None:
    """Seed 10 comes after seed 9, not after seed 1: the report prints ``per_seed`` in seed order."""
    seeds = [0, 2, 9, 10, 11]
    a = {(s, 0): 0.5 for s in seeds}
    b = {(s, 0): 0.5 + s / 100 for s in seeds}
    n = bootstrap.nested_level(a, b)
    assert n is not None and list(n["replicates"]) == ["0", "2", "9", "10", "11"]
    assert n["per_seed"] == pytest.approx([s / 100 for s in seeds])


def test_seeds_needed_matches_the_power_formula() -> None:
    """sd 0.10 between seeds, none within: to find 0.05 at 80 % the t formula needs n with
    (t₀.₉₇₅ + t₀.₈)·0.1/√n ≤ 0.05; by hand (t tables) n = 34 does, 33 does not."""
    from scipy import stats

    n = bootstrap.seeds_needed(0.10, None, 1, 0.05)

    def ok(k: int) -> bool:
        return (stats.t.ppf(0.975, k - 1) + stats.t.ppf(0.8, k - 1)) * 0.1 / k**0.5 <= 0.05

    assert n is not None and ok(n) and not ok(n - 1)
    assert n == 34
    # replicates shrink only the within part: with sd_within 0.2 and 4 replicates sd = √(0.01 + 0.01)
    assert bootstrap.seeds_needed(0.10, 0.20, 4, 0.05) == bootstrap.seeds_needed(0.02**0.5, None, 1, 0.05)
    assert bootstrap.seeds_needed(0.5, None, 1, 0.001, limit=50) is None
