"""``vedas demo --ablation --merge``: saved reports merged equal the report of all their units."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from vedas.errors import UserError
from vedas.experiments import ablation, merge

CONDITIONS = ("trained", "zeros", "noise", "shuffled", "replay_off", "replay_placeholder")
LATENT = ("latent", "vedas", "random_replay", "no_replay")


def _outcomes(rng: random.Random, p: float, n: int) -> list[dict[str, Any]]:
    return [{"id": f"q{i}", "correct": rng.random() < p} for i in range(n)]


def unit(rng: random.Random, name: str, p: float, n: int = 40) -> dict[str, Any]:
    """A unit's result as ``run_unit`` writes it, with random outcomes around accuracy ``p``."""
    per_sample = _outcomes(rng, p, n)
    report: dict[str, Any] = {
        "accuracy": sum(s["correct"] for s in per_sample) / n,
        "per_sample": per_sample,
        "ar_steps_mean": rng.uniform(5, 100),
        "latency_ms": {k: rng.uniform(1, 50) for k in ("prefill", "latent", "decode", "total")},
        "train_seconds": rng.uniform(100, 200),
        "unit_seconds": rng.uniform(200, 300),
        "load_average": [rng.uniform(0, 1), rng.uniform(1, 2)],
        "n": n,
        "per_category": {c: {"accuracy": rng.random()} for c in ("diff", "net")},
    }
    if name in LATENT:
        conditions = {}
        for c in CONDITIONS:
            outcomes = per_sample if c == "trained" else _outcomes(rng, p - 0.1, n)
            conditions[c] = {"accuracy": sum(s["correct"] for s in outcomes) / n, "per_sample": outcomes}
        report["latent_use"] = {
            "conditions": conditions,
            "sweep": [{"latents": k, "accuracy": rng.random()} for k in (0, 4)],
        }
    return report


def units(seeds: range, replicates: dict[int, int], rng: random.Random) -> dict[str, dict[Any, Any]]:
    """Every variant's units on ``seeds``; latent-phase replicates per seed as ``replicates`` says."""
    results: dict[str, dict[Any, Any]] = {"cot": {(s, 0): unit(rng, "cot", 0.9) for s in seeds}}
    for name, p in zip(LATENT, (0.55, 0.6, 0.5, 0.45)):
        results[name] = {(s, r): unit(rng, name, p) for s in seeds for r in range(replicates.get(s, 1))}
    return results


def saved(path: Path, results: dict[str, dict[Any, Any]]) -> Path:
    """``results`` summarised and saved as an ablation writes it."""
    summary = ablation.summarise(results)
    meta = {
        "machine": "test",
        "preset": "fine",
        "synth": {},
        "size_line": "tiny",
        "seeds": sorted({k[0] for reps in results.values() for k in reps}),
        "elapsed_seconds": 1.0,
        "units_seconds_total": sum(r["unit_seconds"] for reps in results.values() for r in reps.values()),
        "units_load_average": [0.0, 1.0],
        "settings": {"size": {"train": 16, "test": 40}, "synth": {"context_sentences": 16}},
    }
    path.mkdir(parents=True)
    ablation.save(path, summary, meta)
    return path / "ablation.json"


def test_merged_reports_equal_the_report_of_every_unit_at_seed_level(tmp_path: Path) -> None:
    rng = random.Random(0)
    results = units(range(7), {1: 2, 4: 3}, rng)  # replicates nested in two seeds
    half = {n: {k: r for k, r in reps.items() if k[0] < 3} for n, reps in results.items()}
    rest = {n: {k: r for k, r in reps.items() if k[0] >= 3} for n, reps in results.items()}
    reference = ablation.summarise(results)
    summary, meta = merge.merge([saved(tmp_path / "b", rest), saved(tmp_path / "a", half)])  # order: any

    assert meta["seeds"] == list(range(7)) and not meta["question_level"]
    for got, want in zip(summary["methods"], reference["methods"], strict=True):
        assert got["method"] == want["method"] and got["runs"] == want["runs"]
        for k in ("accuracy", "std", "std_seed_means", "seed_accuracy", "accuracies", "unit_seconds"):
            assert got[k] == pytest.approx(want[k], rel=1e-12), (got["method"], k)
    assert [(c["a"], c["b"]) for c in summary["comparisons"]] == [
        (c["a"], c["b"]) for c in reference["comparisons"]
    ]
    for got, want in zip(summary["comparisons"], reference["comparisons"]):
        for k in ("difference", "low", "high", "sd_between", "sd_within", "detectable_80", "per_seed"):
            assert got["seed_level"][k] == pytest.approx(want["seed_level"][k], rel=1e-9), (got["b"], k)
        assert (
            got["beyond_interval"] == want["beyond_interval"] and got["seeds_needed"] == want["seeds_needed"]
        )
        assert "low" not in got and got["beyond_question_interval"] is None  # no per-question outcomes
    for got, want in zip(summary["latent_use"], reference["latent_use"], strict=True):
        assert got["seeds"] == want["seeds"] and got["accuracy"] == pytest.approx(want["accuracy"])
        for c, d in want["drop_seed_level"].items():
            assert got["drop_seed_level"][c]["low"] == pytest.approx(d["low"], rel=1e-9)
        assert got["verdict"] == want["verdict"] and got["replay_verdict"] == want["replay_verdict"]
        assert got["drop"] == {}
    # the sweep: each report's mean, weighted by its runs
    for got, want in zip(summary["latent_use"], reference["latent_use"]):
        assert [p["accuracy"] for p in got["sweep"]] == pytest.approx([p["accuracy"] for p in want["sweep"]])


def test_one_report_rebuilt_keeps_its_question_level_intervals(tmp_path: Path) -> None:
    results = units(range(4), {}, random.Random(1))
    path = saved(tmp_path / "a", results)
    summary, meta = merge.merge([path])
    original = json.loads(path.read_text())
    assert meta["question_level"]
    for got, want in zip(summary["comparisons"], original["comparisons"], strict=True):
        assert (got["difference"], got["low"], got["high"]) == (want["difference"], want["low"], want["high"])
        for k in ("difference", "low", "high", "per_seed", "sd_between"):
            assert got["seed_level"][k] == pytest.approx(want["seed_level"][k], rel=1e-12)
    assert [u["drop"] for u in summary["latent_use"]] == [u["drop"] for u in original["latent_use"]]


def test_merge_refuses_overlap_other_settings_and_non_reports(tmp_path: Path) -> None:
    rng = random.Random(2)
    a = saved(tmp_path / "a", units(range(3), {}, rng))
    b = saved(tmp_path / "b", units(range(2, 4), {}, rng))
    with pytest.raises(
        UserError, match=r"`cot` seed 2 replicate 0 is in both .*a/ablation.json and .*b/ablation"
    ):
        merge.merge([a, b])
    c = saved(tmp_path / "c", units(range(5, 6), {}, rng))
    other = json.loads(c.read_text())
    other["settings"]["synth"]["context_sentences"] = 0
    c.write_text(json.dumps(other))
    with pytest.raises(
        UserError, match=r"c/ablation.json was run with other settings .*`synth.context_sentences`"
    ):
        merge.merge([a, c])
    (tmp_path / "junk.json").write_text('{"methods": []}')
    with pytest.raises(UserError, match=r"junk.json is not an ablation report \(no comparisons, latent_use"):
        merge.merge([tmp_path / "junk.json"])
    with pytest.raises(UserError, match="does not exist"):
        merge.merge([tmp_path / "nothing.json"])


def test_merge_cli_writes_the_report_and_never_overwrites_an_input(tmp_path: Path) -> None:
    rng = random.Random(3)
    a = saved(tmp_path / "a", units(range(2), {}, rng))
    b = saved(tmp_path / "b", units(range(2, 4), {}, rng))
    cli = [sys.executable, "-m", "vedas.cli", "demo", "--ablation", "--merge", str(a), str(b), "--out"]
    before = a.read_text()
    res = subprocess.run([*cli, str(tmp_path / "a")], capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and "would overwrite" in res.stderr and "Traceback" not in res.stderr
    assert a.read_text() == before
    res = subprocess.run([*cli, str(tmp_path / "ab")], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    md = (tmp_path / "ab" / "ablation.md").read_text()
    assert "merged from the saved reports" in md and "– (merged reports)" in md
    assert json.loads((tmp_path / "ab" / "ablation.json").read_text())["seeds"] == [0, 1, 2, 3]
    assert (tmp_path / "ab" / "ablation.png").stat().st_size > 10_000
