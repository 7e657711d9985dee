"""What was trained is recorded: a short run that never reached the last curriculum stage says so at
the end, its checkpoint records the stage, and eval/infer warn when asked for more latent steps than
were trained (they used to run the untrained ones silently)."""

from __future__ import annotations

import yaml

import vedas
from vedas.checkpoint import untrained_latents


def test_a_short_run_records_its_stage_and_eval_warns(vedas_cli, train_args, tmp_path, synth_dir):
    out = tmp_path / "run"
    # 2 epochs, T_r = 2, one stage per epoch: epoch 0 is stage 0, epoch 1 stage 1 of 2
    code, stdout, err = vedas_cli.main(*train_args(out))
    assert code == 0, err
    assert "reached curriculum stage 1 of 2: 1 of 2 latent steps trained" in stdout
    meta = yaml.safe_load((out / "final" / "config.yaml").read_text())
    assert meta["trained"] == {"method": "vedas", "stage": 1, "last_stage": 2, "latents": 1}
    assert meta["latent"]["latents"] == 2  # what eval uses by default: more than trained
    assert vedas.load(out / "checkpoints" / "step-4").trained == meta["trained"]

    args = ["--checkpoint", str(out), "--question", "How many?", "--max-new-tokens", "2", "--device", "cpu"]
    code, _, err = vedas_cli.main("infer", *args)
    assert code == 0
    assert (
        "vedas infer: warning: 2 latent steps asked, but training reached curriculum stage 1 of 2 "
        "(1 latent steps trained, method vedas); the other 1 are untrained" in err
    )
    code, _, err = vedas_cli.main("infer", *args, "--latents", "1")
    assert code == 0 and "warning" not in err
    report = tmp_path / "r.json"
    code, _, err = vedas_cli.main(
        "eval", "--checkpoint", str(out), "--data", f"synthetic:{synth_dir}", "--limit", "2",
        "--max-new-tokens", "2", "--device", "cpu", "--out", str(report),
    )  # fmt: skip
    assert code == 0, err
    assert "vedas eval: warning: 2 latent steps asked" in err


def test_the_warning_rule():
    trained = {"method": "vedas", "stage": 0, "last_stage": 4, "latents": 0}
    assert untrained_latents(trained, "vedas", 4) is not None
    assert untrained_latents(trained, "vedas", 0) is None
    assert untrained_latents(trained, "cot", 4) is None  # no latent steps asked
    assert untrained_latents(None, "vedas", 4) is None  # an old checkpoint: nothing recorded, no warning
    full = {"method": "vedas", "stage": 4, "last_stage": 4, "latents": 4}
    assert untrained_latents(full, "latent", 4) is None
    assert "5 latent steps asked" in untrained_latents(full, "latent", 5)
