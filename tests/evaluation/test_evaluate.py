"""``vedas eval``, ``vedas bench`` and ``vedas demo`` on tiny models: report schemas and honest counting."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from vedas.config import LatentConfig
from vedas.data import load as load_data
from vedas.evaluation.evaluate import evaluate, markdown
from vedas.model import VedasModel

REPORT_KEYS = {
    "method",
    "dataset",
    "n",
    "accuracy",
    "scoring_rule",
    "ar_steps_mean",
    "latency_ms",
    "batch_size",
    "latents",
    "device",
    "per_sample",
}


@pytest.fixture(scope="module")
def synth_dir(synth_data) -> Path:
    return synth_data(8, 6)


@pytest.fixture(scope="module")
def records(synth_dir):
    return list(load_data("synthetic", path=str(synth_dir), split="test"))


def test_report_follows_the_spec_schema_and_counts_correctly(tiny, records):
    vm = VedasModel(*tiny, LatentConfig(latents=2, replay_k=4, max_new_tokens=6))
    rep = evaluate(
        vm, records, "vedas", batch_size=4, scoring="vedas", dataset="synthetic/test", progress=False
    )
    assert rep.keys() >= REPORT_KEYS
    assert set(rep["latency_ms"]) == {"prefill", "latent", "decode", "total"}
    assert rep["n"] == len(records) == len(rep["per_sample"]) and rep["latents"] == 2
    for s in rep["per_sample"]:
        assert {"id", "prediction", "answer", "correct", "ar_steps", "latency_ms"} <= s.keys()
        assert s["ar_steps"] >= 2  # latent chunks count as AR steps
    from vedas.evaluation.scoring import score

    expect = sum(score(s["prediction"], r, "vedas") for s, r in zip(rep["per_sample"], records)) / len(
        records
    )
    assert rep["accuracy"] == expect
    assert rep["ar_steps_mean"] == sum(s["ar_steps"] for s in rep["per_sample"]) / len(records)
    lat = rep["latency_ms"]
    assert abs(lat["total"] - (lat["prefill"] + lat["latent"] + lat["decode"])) < 1e-6
    assert set(rep["per_category"]) <= {"locate", "sum", "diff", "most", "net"}
    assert "| vedas | synthetic/test |" in markdown([rep])


def test_latent_override_is_recorded_and_no_cot_has_none(tiny, records):
    vm = VedasModel(*tiny, LatentConfig(latents=2, replay_k=4, max_new_tokens=4))
    assert evaluate(vm, records[:2], "vedas", batch_size=2, latents=3, progress=False)["latents"] == 3
    rep = evaluate(vm, records[:2], "no_cot", batch_size=2, progress=False)
    assert rep["latents"] == 0 and rep["latency_ms"]["latent"] < 5


def test_bad_arguments_fail_before_compute(tiny, records):
    vm = VedasModel(*tiny)
    with pytest.raises(ValueError, match="rule"):
        evaluate(vm, records, scoring="lenient", progress=False)
    with pytest.raises(ValueError, match="batch_size"):
        evaluate(vm, records, batch_size=0, progress=False)


def test_eval_cli_writes_json_and_markdown(tiny, arch, synth_dir, tmp_path):
    if arch == "qwen3_vl":  # a 25 s subprocess each; run in process in tests/backbones/test_qwen3_vl.py
        pytest.skip(
            "qwen3_vl: vedas eval/infer are covered in process by test_train_eval_infer_analyze_on_qwen3_vl"
        )
    VedasModel(*tiny, LatentConfig(latents=1, replay_k=2, max_new_tokens=3)).save(tmp_path / "ckpt")
    out = tmp_path / "rep" / "report.json"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "vedas.cli",
            "eval",
            "--checkpoint",
            str(tmp_path / "ckpt"),
            "--data",
            f"synthetic:{synth_dir}",
            "--method",
            "latent",
            "--batch-size",
            "3",
            "--out",
            str(out),
        ],
        check=True,
        capture_output=True,
    )
    rep = json.loads(out.read_text())
    assert rep.keys() >= REPORT_KEYS and rep["method"] == "latent" and rep["latents"] == 1
    assert out.with_suffix(".md").read_text().startswith("| method |")


@pytest.mark.slow
def test_demo_end_to_end_small(tmp_path):
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "vedas.cli",
            "demo",
            "--quick",
            "--out",
            str(tmp_path),
            "--train",
            "32",
            "--test",
            "16",
            "--epochs",
            "2",
            "--latent-epochs",
            "2",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    rep = json.loads((tmp_path / "report.json").read_text())
    assert [m["method"] for m in rep["methods"]] == ["no_cot", "cot", "latent", "vedas"]
    for m in rep["methods"]:
        assert {"method", "accuracy", "ar_steps_mean", "latency_ms"} <= m.keys() and "total" in m[
            "latency_ms"
        ]
        assert Path(rep["checkpoints"][m["method"]], "config.yaml").is_file()
    for png in ("accuracy_vs_latency.png", "training_curves.png"):
        assert (tmp_path / png).stat().st_size > 5000
    md = (tmp_path / "report.md").read_text()
    assert "machine:" in md and "scoring rule" in md and "seeds [0]" in md
    # latent and vedas continue from the trained cot checkpoint (curriculum stage 0 = explicit CoT)
    for m in ("latent", "vedas"):
        assert (
            json.loads((tmp_path / m / "report.json").read_text())["initialised_from"]
            == rep["checkpoints"]["cot"]
        )
    assert (
        json.loads((tmp_path / "cot" / "report.json").read_text())["initialised_from"] == "tiny random model"
    )


@pytest.mark.slow
def test_bench_quick_writes_every_ratio(tmp_path):
    out = tmp_path / "bench.json"
    res = subprocess.run(
        [sys.executable, "-m", "vedas.cli", "bench", "--quick", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    r = json.loads(out.read_text())
    for key in (
        "latent_speedup_cached_vs_recompute",
        "e2e_latency_ratio_vedas_over_no_cot",
        "e2e_speedup_vedas_over_cot",
        "ar_steps_ratio_cot_over_vedas",
        "throughput_ratio_batch16_over_batch1",
        "recording_overhead",
        "peak_memory_ratio_eager_over_recording",
    ):
        assert isinstance(r[key], float), key
    assert r["device"] and r["sizes"]["visual_tokens"] >= 128 and r["sizes"]["prompt_tokens"] >= 300
    assert r["ar_steps_ratio_cot_over_vedas"] > 1  # forced lengths: the cot target is longer than the answer


def test_bench_interleaves_variants_and_takes_ratios_within_a_round():
    from types import SimpleNamespace

    from vedas.experiments import bench

    order: list[str] = []

    def call(name):
        def run():
            order.append(name)
            return SimpleNamespace(timings_ms={"prefill": 1.0}, ar_steps=[3, 5])

        return run

    runs = bench.interleaved({n: call(n) for n in "abc"}, "cpu", repeats=3)
    assert order == list("abc") + list("abc") + list("bca") + list("cab")  # warm-up, then rotating rounds
    assert all(len(r) == 3 and r[0]["ar_steps"] == 4 and r[0]["total"] >= 0 for r in runs.values())
    # a slow round slows both sides: the within-round ratio stays 2, the ratio of medians would not
    paired = {
        "x": [{"total": 2.0}, {"total": 20.0}, {"total": 200.0}],
        "y": [{"total": 1.0}, {"total": 10.0}, {"total": 2.0}],
    }
    assert bench.ratio(paired, "x", "y") == 2.0
    assert bench.medians(paired["x"])["total"] / bench.medians(paired["y"])["total"] == 10.0
