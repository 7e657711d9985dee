"""Gradient checkpointing in a real training step: the vision tower is recomputed only when it trains."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from vedas.data import synth
from vedas.train.config import load_config
from vedas.train.recipe import (
    epoch_order,
    seed_everything,
    setup,
    setup_accelerator,
    setup_data,
    train_step,
)
from vedas.train.state import TrainState

ROOT = Path(__file__).resolve().parents[2]
TINY = "{hidden: 64, layers: 2, heads: 4, kv_heads: 2, vision_depth: 2, vision_hidden: 32, max_pixels: 12544}"


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth")
    synth.write(out, train=4, test=2, seed=0, progress=False)
    return out


def _step(synth_dir: Path, vision: str, lora: bool, ckpt: bool) -> dict:
    """One optimizer step of ``vedas train`` (cot: one tower call per step); what the tower did in it."""
    cfg = load_config(
        str(ROOT / "configs/synthetic_tiny.yaml"),
        [
            "--method", "cot", "--model.tiny", TINY, "--model.vision", vision, "--lora.enabled", str(lora).lower(),
            "--lora.r", "4", "--lora.dropout", "0", "--optim.gradient_checkpointing", str(ckpt).lower(),
            "--optim.batch_size", "2", "--data.path", str(synth_dir), "--run.output_dir", "unused",
        ],
    )  # fmt: skip
    acc = setup_accelerator(cfg)
    seed_everything(cfg.optim.seed)
    data = setup_data(cfg, say=lambda line: None)
    run = setup(cfg, acc, data)
    run.wrapped, run.optimizer = acc.prepare(run.objective, run.optimizer)
    visual = run.vm.model.model.visual
    # a submodule's pre-hook: the recompute re-runs the block's forward, not its __call__, and stops
    # as soon as the last saved tensor is back, before a later submodule returns
    calls = [0]
    visual.blocks[0].attn.register_forward_pre_hook(lambda *a: calls.__setitem__(0, calls[0] + 1))
    grads: dict[str, torch.Tensor] = {}
    for n, p in visual.named_parameters():
        if p.requires_grad:
            p.register_hook(lambda g, n=n: grads.__setitem__(n, g.detach().clone()))
    state = TrainState()
    train_step(run, state, 0, 0, epoch_order(len(data.records), cfg.optim.seed, 0))
    step_calls = calls[0]
    prompt = run.vm.prepare([data.records[0].images], [data.records[0].question])
    features = run.vm.backbone.visual_features(prompt.pixel_values, prompt.image_grid_thw)[0]
    return {"calls": step_calls, "grads": grads, "requires_grad": features.requires_grad}


def test_a_frozen_tower_is_neither_checkpointed_nor_backpropagated(synth_dir):
    plain = _step(synth_dir, "train", lora=True, ckpt=False)
    ckpt = _step(synth_dir, "train", lora=True, ckpt=True)
    assert not plain["requires_grad"] and not ckpt["requires_grad"]
    assert ckpt["calls"] == plain["calls"] == 1, "the frozen tower ran again in backward"
    assert not ckpt["grads"]


def test_a_training_tower_is_checkpointed_with_the_plain_gradients(synth_dir):
    plain = _step(synth_dir, "train", lora=False, ckpt=False)
    ckpt = _step(synth_dir, "train", lora=False, ckpt=True)
    assert ckpt["requires_grad"]
    assert plain["calls"] == 1 and ckpt["calls"] == 2, "forward + the recompute in backward"
    assert plain["grads"].keys() == ckpt["grads"].keys() and len(plain["grads"]) > 10
    for n, g in plain["grads"].items():
        assert torch.allclose(g, ckpt["grads"][n], atol=1e-6, rtol=1e-5), n


def test_only_a_training_merger_gets_gradients_and_no_block_is_recomputed(synth_dir):
    ckpt = _step(synth_dir, "merger", lora=False, ckpt=True)
    assert ckpt["calls"] == 1
    assert ckpt["grads"] and all(n.startswith("merger.") for n in ckpt["grads"])
