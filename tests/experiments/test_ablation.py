"""``vedas demo --ablation`` end to end at smoke size: every unit, the report, resume, refused settings."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from vedas.experiments.ablation import COMPARISONS, LATENT_VARIANTS, REMEDIES, RESULT_FILE, VARIANTS

SMOKE = ["--quick", "--preset", "fine", "--train", "16", "--test", "8", "--epochs", "1",
         "--latent-epochs", "1", "--max-new-tokens", "12"]  # fmt: skip


def ablation(out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "vedas.cli", "demo", "--ablation", *SMOKE, "--out", str(out), *extra]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=900)


@pytest.mark.slow
def test_ablation_runs_resumes_and_refuses_other_settings(tmp_path: Path) -> None:
    res = ablation(tmp_path, "--jobs", "2")  # units side by side in 2 workers; the rerun below: in-process
    assert res.returncode == 0, res.stderr[-3000:]
    rep = json.loads((tmp_path / "ablation.json").read_text())
    assert [m["method"] for m in rep["methods"]] == list(VARIANTS)
    for m in rep["methods"]:
        assert {"method", "accuracy", "std", "seeds", "ar_steps_mean", "latency_ms"} <= m.keys()
        assert m["seeds"] == [0] and 0.0 <= m["accuracy"] <= 1.0
    assert [(c["a"], c["b"]) for c in rep["comparisons"]] == [(a, b) for a, b, _ in COMPARISONS]
    for c in rep["comparisons"]:
        assert c["low"] <= c["difference"] <= c["high"] and c["n"] == 8
    assert [u["method"] for u in rep["latent_use"]] == list(LATENT_VARIANTS)
    for u in rep["latent_use"]:
        probes = (
            set() if u["method"] == "no_replay" else {"replay_placeholder", "replay_oracle", "replay_anti"}
        )
        assert set(u["accuracy"]) == {"trained", "zeros", "noise", "shuffled", "replay_off", *probes}
        assert u["verdict"]
        assert [p["latents"] for p in u["sweep"]] == [0, 1, 2, 3, 4]  # 0 … 2·T_r
    # the remedies, each on the latent checkpoint, probed on the latent-use line
    assert [r["remedy"] for r in rep["remedies"]] == list(REMEDIES)
    latent_ckpt = json.loads((tmp_path / "seed0" / "latent" / RESULT_FILE).read_text())["checkpoint"]
    for r in rep["remedies"]:
        assert {"trained", "zeros", "noise", "shuffled", "replay_off"} <= set(r["accuracy"]) and r["verdict"]
        unit = json.loads((tmp_path / "seed0" / f"remedy-{r['remedy']}" / RESULT_FILE).read_text())
        assert unit["checkpoint"] == latent_ckpt
    assert len(rep["paper_table3"]) == 4
    md = (tmp_path / "ablation.md").read_text()
    assert "Paired differences" in md and "Latent use" in md and "Table 3" in md and "load average" in md
    assert "Remedies on the latent-use line" in md and (tmp_path / "ablation.png").stat().st_size > 10_000
    # every unit came from the one cot checkpoint
    cot = json.loads((tmp_path / "seed0" / "cot" / RESULT_FILE).read_text())["checkpoint"]
    for name in LATENT_VARIANTS:
        unit = json.loads((tmp_path / "seed0" / name / RESULT_FILE).read_text())
        assert unit["initialised_from"] == cot if "initialised_from" in unit else True
        config = (tmp_path / "seed0" / name / "config.yaml").read_text()
        assert f"base: {cot}" in config

    # an interrupted run: one unit's result is missing; the rerun trains only that one
    (tmp_path / "seed0" / "no_replay" / RESULT_FILE).unlink()
    res = ablation(tmp_path, "--jobs", "1")
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.count("seed 0 finished earlier") == len(VARIANTS) - 1 + len(REMEDIES)
    assert "ablation: no_replay seed 0: accuracy" in res.stdout

    # another process has seed 1: this one trains nothing new and reports what is finished (seed 0)
    res = ablation(tmp_path, "--seeds", "2", "--only-seeds", "0")
    assert res.returncode == 0, res.stderr[-3000:]
    assert all(m["seeds"] == [0] for m in json.loads((tmp_path / "ablation.json").read_text())["methods"])
    assert not (tmp_path / "seed1").exists()
    res = ablation(tmp_path, "--seeds", "2", "--only-seeds", "2")
    assert res.returncode == 2 and "--only-seeds: [2] not among --seeds 2" in res.stderr

    res = ablation(tmp_path, "--test", "9")
    assert res.returncode == 2 and "size.test: 8 there, 9 now" in res.stderr

    # a second latent-phase replicate from the same cot: its own data order, in seed0/rep1
    res = ablation(tmp_path, "--replicates", "2", "--variants", "latent", "--no-remedies", "--sweep-max", "0")
    assert res.returncode == 0, res.stderr[-3000:]
    assert "ablation: latent seed 0 replicate 1: accuracy" in res.stdout
    assert (
        "cot seed 0 finished earlier" in res.stdout
        and "ablation: latent seed 0 finished earlier" in res.stdout
    )
    config = (tmp_path / "seed0" / "rep1" / "latent" / "config.yaml").read_text()
    assert f"base: {cot}" in config and "seed: 1000" in config
    latent = next(
        m for m in json.loads((tmp_path / "ablation.json").read_text())["methods"] if m["method"] == "latent"
    )
    assert latent["runs"] == [[0, 0], [0, 1]] and latent["seeds"] == [0] and len(latent["accuracies"]) == 2

    # --report-only: trains nothing (no_replay has no replicate 1); reports every finished unit on disk
    res = ablation(tmp_path, "--replicates", "2", "--variants", "latent", "no_replay", "--report-only")
    assert res.returncode == 0, res.stderr[-3000:]
    assert not re.search(r"^ablation: \S+ seed \d+( replicate \d+)?: accuracy", res.stdout, re.M)
    assert not (tmp_path / "seed0" / "rep1" / "no_replay").exists()
    runs = {m["method"]: m["runs"] for m in json.loads((tmp_path / "ablation.json").read_text())["methods"]}
    assert runs == {"cot": [[0, 0]], "latent": [[0, 0], [0, 1]], "no_replay": [[0, 0]]}

    # a cot below --cot-min: reported, excluded, nothing more trained from it
    res = ablation(tmp_path, "--replicates", "3", "--variants", "latent", "--no-remedies", "--cot-min", "0.5")
    assert res.returncode == 0, res.stderr[-3000:]
    assert re.search(r"cot seed 0 scored [\d.]+ %, below --cot-min 50.0 %: excluded", res.stdout)
    assert not (tmp_path / "seed0" / "rep2").exists()
    rep = json.loads((tmp_path / "ablation.json").read_text())
    assert [e["seed"] for e in rep["excluded_cots"]] == [0] and rep["excluded_cots"][0]["accuracy"] < 0.5
    assert rep["methods"] == [] and "`cot` of seed 0: " in (tmp_path / "ablation.md").read_text()


def test_report_only_without_an_ablation_fails_clearly_and_writes_nothing(tmp_path: Path) -> None:
    out = tmp_path / "not_an_ablation"
    res = ablation(out, "--report-only")
    assert res.returncode != 0 and "Traceback" not in res.stderr, res.stderr[-2000:]
    assert f"--report-only: {out} holds no ablation (no ablation_settings.json)" in res.stderr
    assert not out.exists()


def test_trained_remedies_are_latent_with_one_latent_field_changed(tmp_path: Path) -> None:
    import dataclasses

    from vedas.experiments import demo
    from vedas.experiments.ablation import TRAINED_REMEDIES, variant_config

    size, cot = demo.QUICK.with_preset("fine"), tmp_path / "cot" / "final"
    base = variant_config("latent", size, tmp_path / "data", tmp_path, 0, cot)
    for name, changed in (("latent_nograd", {"latent_grad": "none"}), ("latent+gap", {"latent_norm": "ema"})):
        cfg = variant_config(name, size, tmp_path / "data", tmp_path, 0, cot)
        assert name in TRAINED_REMEDIES and name not in VARIANTS  # opt-in: not in the default ablation
        assert cfg.model.base == str(cot) and cfg.method == "latent"
        assert cfg.latent == dataclasses.replace(base.latent, **changed)
        assert dataclasses.replace(cfg, latent=base.latent, run=base.run) == base


def test_options_change_only_their_fields_of_the_method_they_vary(tmp_path: Path) -> None:
    import dataclasses

    from vedas.experiments import demo
    from vedas.experiments.ablation import OPTION_COMPARISONS, OPTIONS, variant_config

    size, cot = demo.QUICK.with_preset("fine"), tmp_path / "cot" / "final"
    for name, option in OPTIONS.items():
        assert name not in VARIANTS  # opt-in: not in the default ablation
        base_name = option.preset.name
        base = variant_config(base_name, size, tmp_path / "data", tmp_path, 0, cot)
        cfg = variant_config(name, size, tmp_path / "data", tmp_path, 0, cot)
        assert cfg.model.base == str(cot) and cfg.method == base.method
        assert cfg.latent == dataclasses.replace(base.latent, **dict(option.latent))
        assert cfg.scfvr == dataclasses.replace(base.scfvr, **dict(option.scfvr))
        assert (option.latent or option.scfvr) and (cfg.latent, cfg.scfvr) != (base.latent, base.scfvr)
        assert dataclasses.replace(cfg, latent=base.latent, scfvr=base.scfvr, run=base.run) == base
        assert cfg.run.output_dir.endswith(name)
        assert any(name == b and a == base_name for a, b, _ in OPTION_COMPARISONS)  # compared with its base
    hidden = variant_config("vedas+hidden", size, tmp_path / "data", tmp_path, 0, cot)
    assert (hidden.scfvr.form, hidden.scfvr.clip, hidden.scfvr.weight) == ("hidden", "separate", 0.1)
    assert hidden.routing is not None  # vedas keeps its routing: only the SCF-VR form differs
