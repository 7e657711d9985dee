"""The ablation's comparisons over replicates nested in seeds (no training: rows as the report holds them)."""

from __future__ import annotations

import pytest

from vedas.experiments.ablation import with_seed_level


def row(method: str, runs: list[list[int]], acc: list[float]) -> dict:
    return {"method": method, "runs": runs, "accuracies": acc, "seeds": sorted({r[0] for r in runs})}


def test_cot_is_paired_with_every_replicate_that_continues_from_it() -> None:
    """cot is trained once per seed; vedas twice from it. By hand: seed 1 (0.80 + 0.70)/2 − 0.98 = −0.23,
    seed 3 (0.75 + 0.75)/2 − 0.96 = −0.21; their mean −0.22. Pairing cot with replicate 0 alone
    would give (−0.18 − 0.21)/2 = −0.195."""
    methods = [
        row("cot", [[1, 0], [3, 0]], [0.98, 0.96]),
        row("vedas", [[1, 0], [1, 1], [3, 0], [3, 1]], [0.80, 0.70, 0.75, 0.75]),
    ]
    (c,) = with_seed_level(methods, [{"a": "cot", "b": "vedas", "low": -1.0, "high": 1.0, "difference": 0.0}])
    s = c["seed_level"]
    assert s["per_seed"] == pytest.approx([-0.23, -0.21]) and s["difference"] == pytest.approx(-0.22)
    assert s["runs"] == 4 and s["replicates"] == {"1": 2, "3": 2}
    # within: seed 1's differences −0.18, −0.28 (squares about their mean 2 · 0.05²), seed 3's equal;
    # pooled over 2 degrees of freedom: √(0.005 / 2) = 0.05
    assert s["sd_within"] == pytest.approx(0.05) and s["df_within"] == 2
    assert set(c["seeds_needed"]) == {"3", "5", "7"}


def test_variants_pair_replicate_by_replicate() -> None:
    methods = [
        row("latent", [[1, 0], [1, 1], [3, 0]], [0.80, 0.90, 0.70]),
        row("vedas", [[1, 0], [1, 1], [3, 0], [3, 1]], [0.85, 0.85, 0.72, 0.99]),
    ]
    (c,) = with_seed_level(
        methods, [{"a": "latent", "b": "vedas", "low": -1.0, "high": 1.0, "difference": 0.0}]
    )
    # seed 1: (+0.05 − 0.05)/2 = 0; seed 3: only replicate 0 both ran, +0.02 (vedas's replicate 1 unpaired)
    assert c["seed_level"]["per_seed"] == pytest.approx([0.0, 0.02]) and c["seed_level"]["runs"] == 3
