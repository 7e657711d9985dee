"""Inference-time latent optimisation: only the latents move, its objectives fall, and the cache
roll-back reproduces the plain run exactly."""

from __future__ import annotations

import argparse
import json

import pytest
import torch

import vedas
from vedas.config import ConfigError, LatentConfig
from vedas.data import synth
from vedas.method.tto import TTOConfig, add_arguments, alignment_loss, from_args, progression_loss


@pytest.fixture(scope="module")
def vm():
    model, processor = vedas.tiny_model(
        "qwen2_vl", hidden=64, layers=2, vision_depth=1, max_pixels=12544, seed=0
    )
    return vedas.VedasModel(model, processor, LatentConfig(latents=3, replay_k=6, max_new_tokens=6))


def _gen(vm, batch, **kw):
    images, questions, choices = batch
    return vm.generate(images, questions, choices, return_details=True, **kw)


def test_zero_steps_reproduce_the_plain_run(vm, batch3):
    """Forcing the first run's latents with its replays, after rolling the cache back, is the plain run."""
    plain = _gen(vm, batch3)
    d = _gen(vm, batch3, tto=TTOConfig(steps=0))
    assert d.token_ids == plain.token_ids and d.replay_indices == plain.replay_indices
    assert torch.equal(d.latents, plain.latents)
    assert set(d.timings_ms) == {"prefill", "latent", "tto", "decode"}


def test_tto_changes_only_the_latents_and_lowers_its_objective(vm, batch3):
    before = {k: v.clone() for k, v in vm.model.state_dict().items()}
    plain = _gen(vm, batch3)
    cfg = TTOConfig(stages=["stage1", "stage2"], steps=6, lr=0.05, margin=0.5)
    d = _gen(vm, batch3, tto=cfg)
    after = vm.model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)  # bit-identical weights
    assert all(p.grad is None for p in vm.model.parameters())
    loss = d.tto["loss"]
    assert set(loss) == {"stage1", "stage2"} and all(len(v) == cfg.steps + 1 for v in loss.values())
    assert loss["stage1"][-1] < 0.8 * loss["stage1"][0]
    assert loss["stage2"][0] > 0 and loss["stage2"][-1] < loss["stage2"][0]
    assert d.tto["passes"] == cfg.steps * 3 + 3  # stage-2 steps × T_r, then the final re-run
    assert d.replay_indices == plain.replay_indices  # the replayed blocks are kept fixed
    assert (d.latents - plain.latents).norm(dim=-1).min() > 1e-3
    assert d.timings_ms["tto"] > 0 and d.ar_steps == [3 + len(t) for t in d.token_ids]


def test_stage2_optimises_each_sample_as_if_alone(vm, batch3):
    cfg = TTOConfig(stages=["stage2"], steps=2, lr=0.05, margin=0.5)
    both = _gen(vm, batch3, tto=cfg)
    images, questions, choices = batch3
    for i in (0, 2):
        one = _gen(vm, ([images[i]], [questions[i]], [choices[i]]), tto=cfg)
        assert torch.allclose(one.latents[0], both.latents[i], atol=1e-4)


def test_alignment_loss_prefers_each_latents_own_anchor():
    g = torch.Generator().manual_seed(0)
    anchors = torch.randn(4, 16, generator=g)
    has = torch.ones(4, dtype=torch.bool)
    aligned = anchors[:, None].expand(-1, 3, -1) * 2.0  # cosine ignores scale
    shuffled = aligned[[1, 2, 3, 0]]
    assert alignment_loss(aligned, anchors, has, 0.1) < alignment_loss(shuffled, anchors, has, 0.1)
    # one image-bearing sample has no negatives: 1 - cos
    lone = torch.tensor([True, False, False, False])
    z = torch.randn(4, 3, 16, generator=g)
    cos = torch.nn.functional.cosine_similarity(z[0], anchors[0][None], dim=-1)
    assert alignment_loss(z, anchors, lone, 0.1).item() == pytest.approx((1 - cos).mean().item(), rel=1e-5)


def test_progression_loss_is_a_hinge_on_rising_entropy():
    falling = torch.tensor([[3.0, 2.0, 1.0]])
    assert progression_loss(falling).item() == 0.0
    assert progression_loss(falling, margin=1.5).item() == pytest.approx(0.5)
    rising = torch.tensor([[1.0, 2.0, 4.0], [1.0, 1.0, 1.0]])
    assert progression_loss(rising).item() == pytest.approx(1.5)  # sample 0: mean(1, 2); sample 1: 0
    assert progression_loss(torch.tensor([[5.0]])).item() == 0.0


def test_bad_tto_requests_fail_clearly(vm, batch3):
    with pytest.raises(ValueError, match="tto: needs a latent mode"):
        _gen(vm, batch3, mode="cot", tto=TTOConfig())
    with pytest.raises(ValueError, match="tto: runs on the cached engine"):
        _gen(vm, batch3, engine="recompute", tto=TTOConfig())
    with (
        pytest.raises(ValueError, match=r"tto: stage1 .* no sample in this batch has one"),
        pytest.warns(UserWarning, match="no image"),
    ):
        vm.generate([None], ["What is two plus two?"], tto=TTOConfig(stages=["stage1"], steps=1))
    with pytest.raises(ConfigError, match="stages: unknown stage"):
        TTOConfig(stages=["stage3"])
    with pytest.raises(ConfigError, match="steps"):
        TTOConfig(steps=-1)
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert from_args(parser.parse_args([])) is None
    cfg = from_args(parser.parse_args(["--tto", "stage2,stage1", "--tto-steps", "2", "--tto-lr", "0.1"]))
    assert cfg == TTOConfig(stages=["stage2", "stage1"], steps=2, lr=0.1)
    with pytest.raises(ConfigError, match="--tto: stages"):
        from_args(parser.parse_args(["--tto", "stage1,stage1"]))


def test_eval_cli_reports_the_tto_time(vm, tmp_path):
    from vedas.cli import main

    synth.write(tmp_path / "data", train=0, test=2, seed=0)
    ckpt = vm.save(tmp_path / "ckpt")
    out = tmp_path / "report.json"
    args = [
        "eval",
        "--checkpoint",
        str(ckpt),
        "--data",
        f"synthetic:{tmp_path / 'data'}",
        "--batch-size",
        "2",
    ]
    args += ["--tto", "stage1,stage2", "--tto-steps", "2", "--out", str(out)]
    assert main(args) == 0
    rep = json.loads(out.read_text())
    lat = rep["latency_ms"]
    assert set(lat) == {"prefill", "latent", "tto", "decode", "total"} and lat["tto"] > 0
    assert lat["total"] == pytest.approx(lat["prefill"] + lat["latent"] + lat["tto"] + lat["decode"])
    assert rep["tto"]["stages"] == ["stage1", "stage2"] and rep["tto"]["steps"] == 2
    assert set(rep["tto"]["loss_before"]) == {"stage1", "stage2"}
    assert main([*args[:-2], "--tto", "stage9", "--out", str(out)]) == 2
