"""``vedas analyze latent-use``: the transforms, and the command against plain evaluate / generate runs."""

from __future__ import annotations

import json

import pytest
import torch

import vedas
from vedas.analysis.latent_use import make_transform
from vedas.cli import main
from vedas.evaluation.evaluate import evaluate


def test_transforms():
    z = torch.randn(3, 8) * torch.tensor([[1.0], [10.0], [0.1]])
    assert torch.equal(make_transform("zeros")(0, z), torch.zeros_like(z))
    shuffled = make_transform("shuffled")(0, z)
    assert torch.equal(shuffled, z[[2, 0, 1]])  # every sample gets another sample's latent
    noise = make_transform("noise", seed=3)
    a = noise(0, z)
    assert torch.allclose(a.norm(dim=-1), z.norm(dim=-1), rtol=1e-5)  # matched per-latent norm
    assert not torch.allclose(a, z)
    assert torch.equal(make_transform("noise", seed=3)(0, z), a)  # seeded
    assert not torch.equal(noise(1, z), a)  # fresh noise every call
    assert make_transform("trained") is None
    with pytest.raises(ValueError, match="condition='dummy'"):
        make_transform("dummy")


def test_latent_use_command(checkpoint, synth_dir, test_records, tmp_path, assert_png, capsys):
    out = tmp_path / "use"
    argv = ["analyze", "latent-use", "--checkpoint", str(checkpoint), "--data", f"synthetic:{synth_dir}"]
    # 8 new tokens keep decoding cheap; every independent run below uses the same cap
    flags = ["--n", "4", "--batch-size", "2", "--sweep-max", "3", "--max-new-tokens", "8", "--no-progress"]
    assert main([*argv, *flags, "--out", str(out)]) == 0
    assert "sweep:" in capsys.readouterr().out
    assert_png(out / "latent_use.png", min_w=600, min_h=250)
    report = json.loads((out / "latent_use.json").read_text())
    assert report["trained_latents"] == 2 and set(report["conditions"]) == {
        "trained",
        "zeros",
        "noise",
        "shuffled",
    }
    assert [p["latents"] for p in report["sweep"]] == [0, 1, 2, 3]

    vm = vedas.load(checkpoint)
    recs = test_records[:4]
    plain = evaluate(vm, recs, method="vedas", batch_size=2, max_new_tokens=8, warmup=False, progress=False)
    trained = report["conditions"]["trained"]
    assert trained["accuracy"] == plain["accuracy"]
    assert [s["prediction"] for s in trained["per_sample"]] == [s["prediction"] for s in plain["per_sample"]]
    assert trained["same_prediction_as_trained"] == 1.0
    # zeroed latents: the predictions of generate with a zeroing transform, batch by batch
    zeros = []
    for i in range(0, 4, 2):
        b = recs[i : i + 2]
        zeros += vm.generate(
            [r.images for r in b],
            [r.question for r in b],
            [r.choices for r in b],
            latent_transform=lambda t, z: torch.zeros_like(z),
            max_new_tokens=8,
        )[0]
    assert [s["prediction"] for s in report["conditions"]["zeros"]["per_sample"]] == zeros
    same = sum(a == b for a, b in zip(zeros, [s["prediction"] for s in plain["per_sample"]])) / 4
    assert report["conditions"]["zeros"]["same_prediction_as_trained"] == same
    # the sweep's count-1 point is evaluate with latents=1
    one = evaluate(vm, recs, "vedas", 2, latents=1, max_new_tokens=8, warmup=False, progress=False)
    assert report["sweep"][1]["accuracy"] == one["accuracy"]
    assert report["sweep"][2]["accuracy"] == trained["accuracy"]


def test_latent_use_needs_a_batch_to_shuffle(checkpoint, synth_dir, tmp_path, capsys):
    argv = ["analyze", "latent-use", "--checkpoint", str(checkpoint), "--data", f"synthetic:{synth_dir}"]
    assert main([*argv, "--out", str(tmp_path), "--batch-size", "1"]) == 2
    assert "vedas analyze latent-use: --batch-size: must be ≥ 2" in capsys.readouterr().err


def _report(outcomes: dict[str, list[int]]) -> dict:
    """A unit report whose latent-use conditions have the given per-question outcomes (1 = correct)."""
    conditions = {
        c: {
            "accuracy": sum(v) / len(v),
            "per_sample": [{"id": f"q{i}", "prediction": "A", "correct": bool(x)} for i, x in enumerate(v)],
        }
        for c, v in outcomes.items()
    }
    return {"latent_use": {"conditions": conditions, "sweep": [{"latents": 0, "accuracy": 0.5}]}}


def test_the_verdict_follows_the_drop_and_its_interval():
    from vedas.analysis.latent_use import pooled

    n = 200
    right = [1] * 150 + [0] * 50  # 75 % as trained
    same = {c: right for c in ("trained", "zeros", "noise", "shuffled", "replay_off")}
    verdict = pooled("latent", {0: _report(same)})["verdict"]
    assert verdict.startswith("latents' content not used")
    # zeroing the latents loses 40 questions on each of two seeds: a drop well beyond the interval
    zeroed = [1] * 110 + [0] * 90
    row = pooled("latent", {0: _report({**same, "zeros": zeroed}), 1: _report({**same, "zeros": zeroed})})
    assert row["verdict"].startswith("latents' content used: replacing them by zeros")
    assert row["drop"]["zeros"]["difference"] == pytest.approx(0.2) and row["drop"]["zeros"]["low"] > 0
    assert row["drop"]["zeros"]["n"] == 2 * n  # pooled over seeds and questions
    # one question's difference is inside the interval: no verdict of use
    one = [1] * 149 + [0] * 51
    assert pooled("latent", {0: _report({**same, "shuffled": one})})["verdict"].startswith(
        "latents' content not"
    )
    # at chance nothing can drop
    chance = {c: [1] * 50 + [0] * 150 for c in same}
    assert pooled("latent", {0: _report(chance)})["verdict"].startswith("cannot tell")
    # one run: the verdict says it rests on the question-level interval only
    assert "no seed-level interval" in pooled("latent", {0: _report({**same, "zeros": zeroed})})["verdict"]


def test_the_verdict_follows_the_seed_level_interval_when_there_are_runs():
    """Pooled over questions the drop is beyond its interval; over three runs it is not: not used."""
    from vedas.analysis.latent_use import pooled

    right = [1] * 150 + [0] * 50
    same = {c: right for c in ("trained", "zeros", "noise", "shuffled", "replay_off")}
    runs = {
        0: _report({**same, "zeros": [1] * 90 + [0] * 110}),  # −30 points on this run
        1: _report({**same, "zeros": [1] * 152 + [0] * 48}),  # +1
        2: _report(same),  # 0
    }
    row = pooled("latent", runs)
    assert row["drop"]["zeros"]["low"] > 0  # question level: "beyond"
    seed = row["drop_seed_level"]["zeros"]
    assert seed["per_seed"] == pytest.approx([0.30, -0.01, 0.0]) and seed["low"] < 0
    assert row["verdict"].startswith("latents' content not used") and "seed level" in row["verdict"]


def test_probe_adds_the_layout_preserving_and_relevance_replay_conditions(
    checkpoint, synth_dir, test_records
):
    """``probe`` with the synthetic layout known: placeholder, oracle and anti runs beside replay off,
    each the predictions of generate with that policy (the same records, one batch)."""
    from vedas.analysis.latent_use import probe, replay_policies
    from vedas.analysis.replay import RelevanceReplay, SynthRelevance, record_labels
    from vedas.method.replay import PlaceholderReplay

    vm = vedas.load(checkpoint)
    recs = test_records[:4]
    rel = SynthRelevance(synth_dir)
    rep = probe(vm, recs, "vedas", 0, sweep_max=0, relevance=rel)
    conds = rep["conditions"]
    assert set(conds) == {"trained", "zeros", "noise", "shuffled", "replay_off"} | {
        "replay_placeholder",
        "replay_oracle",
        "replay_anti",
    }
    policies = {
        "replay_placeholder": PlaceholderReplay(),
        "replay_oracle": RelevanceReplay(record_labels(vm, recs, rel), "oracle"),
        "replay_anti": RelevanceReplay(record_labels(vm, recs, rel), "anti"),
    }
    for name, policy in policies.items():
        texts, _ = vm.generate_records(recs, mode="vedas", replay_policy=policy)
        got = [s["prediction"] for s in conds[name]["per_sample"]]
        assert len(got) == 4 and got == texts, name
    assert set(replay_policies(vm)) == {"replay_placeholder"}  # no layout known: no oracle/anti


def test_replay_verdict_tells_content_from_layout():
    from vedas.analysis.latent_use import replay_verdict

    def d(low):
        return {"difference": low + 0.05, "low": low, "high": low + 0.1}

    assert replay_verdict({"replay_off": d(0.3)}) is None
    assert replay_verdict({"replay_off": d(0.3), "replay_placeholder": d(-0.02)}).startswith(
        "chunk layout used"
    )
    assert replay_verdict({"replay_off": d(0.3), "replay_placeholder": d(0.1)}).startswith(
        "replayed content used"
    )
    assert replay_verdict({"replay_off": d(-0.1), "replay_placeholder": d(-0.1)}).startswith(
        "replay not shown"
    )
    # the layout kept, empty cells replayed first: the content matters though placeholders did not show it
    anti = replay_verdict({"replay_off": d(0.3), "replay_placeholder": d(-0.02), "replay_anti": d(0.1)})
    assert (
        anti
        == "replayed content used: replaying empty cells first (anti) lowers accuracy beyond the interval"
    )
    assert "chunk layout used" in replay_verdict(
        {"replay_off": d(0.3), "replay_placeholder": d(-0.02), "replay_anti": d(-0.02)}
    )


def test_runs_probed_with_other_settings_pool_what_they_share():
    """Replicate 0 probed with the full sweep and the oracle, replicate 1 with --sweep-max 0 and no
    oracle: the row pools the conditions and sweep points every run has."""
    from vedas.analysis.latent_use import pooled

    right = [1] * 150 + [0] * 50
    full = _report(
        {c: right for c in ("trained", "zeros", "noise", "shuffled", "replay_off", "replay_oracle")}
    )
    full["latent_use"]["sweep"] = [{"latents": n, "accuracy": 0.1 * n} for n in range(5)]
    short = _report({c: right for c in ("trained", "zeros", "noise", "shuffled", "replay_off")})
    short["latent_use"]["sweep"] = [{"latents": 0, "accuracy": 0.3}]
    row = pooled("latent", {(1, 0): full, (1, 1): short, (3, 0): full, (3, 1): short})
    assert set(row["accuracy"]) == {"trained", "zeros", "noise", "shuffled", "replay_off"}
    assert row["sweep"] == [{"latents": 0, "accuracy": pytest.approx(0.15)}]
