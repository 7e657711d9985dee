"""``vedas analyze gradients``: hooked token gradient norms and LoRA nuclear norms against direct autograd."""

from __future__ import annotations

import json

import pytest
import torch

from vedas.analysis import gradients
from vedas.analysis.base import AnalysisError
from vedas.cli import main
from vedas.config import from_dict
from vedas.data import load as load_data
from vedas.train.config import TrainConfig
from vedas.train.recipe import collate_records, seed_everything, setup_data, setup_model, setup_objective


def _objective_and_batch(cfg: TrainConfig, ids: list[str], split: str, stage: int):
    """Rebuild the command's step-0 model exactly (the recipe's setup, same seed, same order) and collate ``ids``."""
    seed_everything(cfg.optim.seed)
    data = setup_data(cfg)
    vm = setup_model(cfg, data.records)
    obj = setup_objective(cfg, vm, data.records, "cpu")
    obj.eval()
    by_id = {r.id: r for r in load_data(cfg.data.name, path=cfg.data.path, split=split)}
    recs = [by_id[i] for i in ids]
    return vm, obj, collate_records(vm, cfg, recs, stage, data.hard if split == cfg.data.split else None)


def _direct_token_norms(vm, obj, batch) -> list[torch.Tensor]:
    """Per layer: ‖∂L/∂h‖ per token via torch.autograd.grad on the captured layer outputs (no tensor hooks)."""
    layers = vm.backbone.decoder_layers()
    outputs: list[list[torch.Tensor]] = [[] for _ in layers]
    handles = [
        layer.register_forward_hook(
            lambda m, a, o, i=i: outputs[i].append(o[0] if isinstance(o, tuple) else o)
        )
        for i, layer in enumerate(layers)
    ]
    try:
        loss = obj(batch)["loss"]
    finally:
        for h in handles:
            h.remove()
    flat = [h for per_layer in outputs for h in per_layer]
    grads = torch.autograd.grad(loss, flat, allow_unused=True)
    out, k = [], 0
    for per_layer in outputs:
        parts = []
        for h in per_layer:
            g = grads[k]
            k += 1
            parts.append(torch.zeros(h.shape[:2]) if g is None else g.norm(dim=-1))
        out.append(torch.cat(parts, 1))
    return out


def test_hooked_norms_equal_autograd_grad_and_hooks_are_removed(train_config):
    cfg, enabled = gradients.resolve_config(str(train_config), [])
    assert enabled and cfg.lora.enabled  # the YAML has LoRA off; the command switches it on
    ids = [f"synth-train-{i:06d}" for i in range(3)]
    vm, obj, batch = _objective_and_batch(cfg, ids, "train", stage=2)  # stage 2: latent chunks with replay
    layers = vm.backbone.decoder_layers()
    before = [len(layer._forward_hooks) for layer in layers], len(vm.backbone.decoder()._forward_pre_hooks)
    tn, _ = gradients.token_norms(obj, batch)
    after = [len(layer._forward_hooks) for layer in layers], len(vm.backbone.decoder()._forward_pre_hooks)
    assert before == after
    direct = _direct_token_norms(vm, obj, batch)
    for li, d in enumerate(direct):
        assert torch.allclose(tn.norms[li], d, rtol=1e-4, atol=1e-9), li
    kinds = set(tn.sample_kinds(0))
    assert kinds == {"text", "visual", "replay", "latent", "target"}
    assert tn.kinds.eq(2).sum() == batch.prompt.input_ids.eq(vm.backbone.image_token_id).sum()


def test_nuclear_norms_equal_svdvals(train_config):
    cfg, _ = gradients.resolve_config(str(train_config), [])
    vm, obj, batch = _objective_and_batch(cfg, ["synth-train-000000", "synth-train-000001"], "train", stage=1)
    params = gradients.lora_params(vm.model)
    assert {(p, ab) for _, p, ab in params} == {(p, ab) for p in "qkvo" for ab in "AB"}
    assert {layer for layer, _, _ in params} == {0, 1}
    with torch.no_grad():  # move B off its zero init so both gradients are non-trivial
        for (_, _, ab), p in params.items():
            if ab == "B":
                p.normal_(std=0.05)
    values, _ = gradients.group_nuclear(obj, batch, params)
    obj.zero_grad()
    obj(batch)["loss"].backward()
    for key, p in params.items():
        assert values[key] == pytest.approx(float(torch.linalg.svdvals(p.grad).sum()), rel=1e-5), key
        assert values[key] > 0


def test_config_overrides_and_errors(train_config):
    cfg, _ = gradients.resolve_config(str(train_config), ["--optim.lr", "0.01", "--latent.latents", "3"])
    assert cfg.optim.lr == 0.01 and cfg.latent.latents == 3
    with pytest.raises(AnalysisError, match=r"optim\.nosuch"):
        gradients.resolve_config(str(train_config), ["--optim.nosuch", "1"])
    with pytest.raises(AnalysisError, match=r"^--lora.target_modules"):
        gradients.resolve_config(str(train_config), ["--lora.target_modules", "[gate_proj]"])
    assert gradients.pick_layers("auto", 28) == [0, 9, 18, 27]
    with pytest.raises(AnalysisError, match=r"^--heatmap-layers"):
        gradients.pick_layers("0,9", 4)


def test_the_run_is_the_recipes_own(train_config, tmp_path):
    """The command builds its run with the recipe's functions, so GAP's modules and the difficulty split
    come with the config, and its update is the recipe's train step."""
    from vedas.method import gap
    from vedas.train.state import TrainState

    ids = [f"synth-train-{i:06d}" for i in range(8)]
    difficulty = tmp_path / "difficulty.json"
    difficulty.write_text(json.dumps({"hard_ids": ids[:3], "per_question": {i: {} for i in ids}}))
    overrides = ["--latent.latent_norm", "ema", "--data.difficulty", str(difficulty)]
    cfg, _ = gradients.resolve_config(str(train_config), overrides)
    run, val = gradients.setup_run(cfg, steps=2, val_split="test", val_n=4)
    assert run.data.hard == set(ids[:3]) and len(val) == 4
    assert gap.NORM_EXTRA in run.vm.extras and run.total_steps == 2 and run.checkpoints is None
    state = TrainState()
    loss = gradients.train_update(run, state, step=0, stage=1)
    assert loss == loss and state.step == 1 and run.scheduler.last_epoch == 1
    with pytest.raises(AnalysisError, match=r"^data.difficulty"):
        gradients.setup_run(
            gradients.resolve_config(str(train_config), ["--data.difficulty", str(tmp_path / "none.json")])[
                0
            ],
            steps=2,
            val_split="test",
            val_n=4,
        )


@pytest.mark.slow
def test_gradients_command_records_what_autograd_computes(train_config, tmp_path, assert_png, capsys):
    out = tmp_path / "grads"
    argv = ["analyze", "gradients", "--config", str(train_config), "--steps", "3", "--probe-after", "0"]
    assert main([*argv, "--val-n", "4", "--probe-size", "2", "--out", str(out), "--no-progress"]) == 0
    captured = capsys.readouterr()
    assert "LoRA is off in the config; enabled for this analysis" in captured.err
    assert "Σ LoRA q/k/v/o gradient nuclear norms per step" in captured.out
    for name, (w, h) in {
        "token_grad_heatmap.png": (600, 300),
        "token_grad_means.png": (400, 150),
        "lora_nuclear_norms.png": (600, 400),
    }.items():
        assert_png(out / name, w, h)
    report = json.loads((out / "gradients.json").read_text())
    assert (
        report["lora_enabled_by_command"] and report["steps"] == 3 and report["nuclear"]["steps"] == [0, 1, 2]
    )
    assert [row["stage"] for row in report["history"]] == [0, 0, 1]  # 8 records / batch 4: 2 steps per epoch
    cfg = from_dict(TrainConfig, report["config"])
    tn = report["token_norms"]

    # step 0 is measured on the initial weights: rebuild them and differentiate directly
    vm, obj, batch = _objective_and_batch(cfg, tn["probe_ids"], "train", stage=0)
    direct = _direct_token_norms(vm, obj, batch)
    # stage 0 has no latent chunks: the prefill, then one pass over [<|latent_end|>, target[:-1]]
    tmask = batch.target_mask[0]
    real = torch.cat([batch.prompt.attention_mask[0], tmask.new_ones(1), tmask[:-1]]).bool()
    for li in tn["heatmap_layers"]:
        ours = torch.tensor(tn["sample0"][str(li)][0])
        assert torch.allclose(ours, direct[li][0][real].float(), rtol=1e-4, atol=1e-9), li
    vis = batch.prompt.input_ids.eq(vm.backbone.image_token_id)
    for li in range(report["layers"]):
        visual_mean = float(direct[li][:, : vis.shape[1]][vis].mean())
        assert tn["mean"][str(li)]["visual"][0] == pytest.approx(visual_mean, rel=1e-4, abs=1e-12)

    # nuclear norms at step 0 on the easy probe batch, against svdvals of a direct backward
    eh = report["easy_hard"]
    assert eh["evaluated_at_step"] == 0 and len(eh["easy_ids"]) + len(eh["hard_ids"]) == 4
    vm, obj, batch = _objective_and_batch(cfg, eh["probe_easy_ids"], "test", stage=0)
    obj.zero_grad()
    obj(batch)["loss"].backward()
    for (layer, proj, ab), p in gradients.lora_params(vm.model).items():
        recorded = report["nuclear"]["easy"][str(layer)][proj][ab][0]
        if ab == "A":
            assert recorded == 0.0  # LoRA B starts at zero, so ∂L/∂A is exactly zero at step 0
        assert recorded == pytest.approx(float(torch.linalg.svdvals(p.grad).sum()), rel=1e-4, abs=1e-12)
