"""Qwen3-VL: DeepStack in the prefill equals the model's own forward; what a replayed token receives;
the MoE variant; training, eval, infer and analyze on a Qwen3-VL checkpoint.

The engine equivalences (cached = recompute, batched = alone, no token replayed twice, T_r = 0
= HF ``generate``), the training oracle and the save/load round trip run on ``qwen3_vl``
through the ``arch`` parametrisation (tests/conftest.py ARCHS, tests/train/test_train.py).
"""

from __future__ import annotations

import json

import pytest
import torch
import yaml

import vedas
from vedas.config import LatentConfig
from vedas.engine.inputs import embed_prompt
from vedas.engine.loop import LatentLoop, chunk_positions
from vedas.engine.runners import make_runner
from vedas.engine.sources import VisualSources
from vedas.model import VedasModel


@pytest.fixture(scope="module")
def q3():
    """A 3-layer tiny Qwen3-VL whose 2 ViT blocks both feed DeepStack rows (after decoder layers 0 and 1)."""
    model, processor = vedas.tiny_model("qwen3_vl", hidden=64, layers=3, heads=4, kv_heads=2, vision_depth=2)
    assert list(model.config.vision_config.deepstack_visual_indexes) == [0, 1]
    return model, processor


class LayerInputs:
    """Captures the hidden states entering decoder layers 1.. and the final norm: each layer's output
    after the DeepStack rows were added."""

    def __init__(self, decoder: torch.nn.Module) -> None:
        self.calls: list[list[torch.Tensor]] = []
        mods = [*list(decoder.layers)[1:], decoder.norm]
        self.handles = [m.register_forward_pre_hook(self._hook(i)) for i, m in enumerate(mods)]

    def _hook(self, i: int):
        def hook(module, args):
            if i == 0:
                self.calls.append([])
            self.calls[-1].append(args[0].detach().clone())

        return hook

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def _ours_and_hf(vm, batch, engine):
    bb = vm.backbone
    cap = LayerInputs(bb.decoder())
    with torch.no_grad():
        LatentLoop(bb, vm.config, make_runner(engine, bb)).prefill(batch)
        vm.model.model(
            input_ids=batch.input_ids,
            attention_mask=batch.attention_mask,
            mm_token_type_ids=batch.mm_token_type_ids,
            pixel_values=batch.pixel_values,
            image_grid_thw=batch.image_grid_thw,
        )
    cap.remove()
    return cap.calls


@pytest.mark.parametrize("engine", ["cached", "recompute"])
def test_prompt_states_after_the_deepstack_layers_equal_the_models_forward(q3, batch3, engine):
    vm = VedasModel(*q3, LatentConfig(latents=2, replay_k=4))
    images, questions, choices = batch3
    batch = vm.prepare(images, questions, choices)
    (ours, ref) = _ours_and_hf(vm, batch, engine)
    real = batch.attention_mask.bool()
    is_img = batch.input_ids == vm.backbone.image_token_id
    tol = 1e-5 if engine == "cached" else 1e-4  # the oracle's attention runs in float32 eager
    for layer, (a, b) in enumerate(zip(ours, ref)):
        assert (a[real] - b[real]).abs().max() <= tol, layer
    # not vacuous: without the DeepStack rows the image tokens' states differ after layer 0 ...
    embeds, _, positions = embed_prompt(vm.backbone, batch)
    cap = LayerInputs(vm.backbone.decoder())
    with torch.no_grad():
        vm.backbone.decoder()(
            inputs_embeds=embeds, attention_mask=batch.attention_mask, position_ids=positions
        )
    cap.remove()
    plain = cap.calls[0][0]
    assert (plain[is_img] - ours[0][is_img]).norm(dim=-1).min() > 1e-2  # every image token
    # ... and every token before a sample's first image token is untouched (causal)
    first = is_img.float().argmax(1)
    before = real & (torch.arange(is_img.shape[1])[None] < first[:, None])
    assert before.any() and (plain[before] - ours[0][before]).abs().max() <= 1e-5


def _hf_rows(vm, batch) -> torch.Tensor:
    """(S, N_total, D) DeepStack rows straight from the model's own image features, in prompt order."""
    out = vm.model.model.get_image_features(batch.pixel_values, batch.image_grid_thw)
    return torch.stack([torch.cat(rows) for rows in out.deepstack_features])


def test_a_replayed_token_receives_its_source_rows_times_its_weight(q3, batch3):
    """The chunk [B¹, z] of the cached engine equals the text model run by hand over prompt + chunk,
    its DeepStack inputs built from the model's own image features: w_i · rows[source_i]."""
    vm = VedasModel(*q3, LatentConfig(latents=2, replay_k=4))
    bb = vm.backbone
    images, questions, choices = batch3
    batch = vm.prepare(images, questions, choices)
    outs: list[torch.Tensor] = []
    handle = bb.final_norm().register_forward_hook(lambda m, a, o: outs.append(o.detach()))
    with torch.no_grad():
        loop = LatentLoop(bb, vm.config, make_runner("cached", bb))
        run = loop.latent_steps(loop.prefill(batch), steps=1)
    handle.remove()
    rep, z = run.replays[0], run.latents[:, 0]
    assert rep is not None and bool(rep.mask.all())
    with torch.no_grad():
        embeds, visual, positions = embed_prompt(bb, batch)
        rows = _hf_rows(vm, batch)
    # the source of replay slot (b, i) is the sample's rep.index[b, i]-th image token: in prompt
    # order, after every image token of the samples before it
    offset = torch.cat([torch.zeros(1, dtype=torch.long), visual.count.cumsum(0)[:-1]])
    src = offset[:, None] + rep.index
    w = rep.weights.to(rows.dtype)
    replayed = rows[:, src] * w[None, ..., None]  # (S, B, K, D)
    k = rep.index.shape[1]
    pos, _ = chunk_positions(positions.max(dim=2).values[0] + 1, rep.token_mask, None)
    chunk = torch.cat([rep.tokens, z[:, None]], 1)
    full = torch.cat([embeds, chunk], 1)
    mask = torch.cat([batch.attention_mask, torch.ones(3, k + 1, dtype=torch.long)], 1)
    at = torch.cat([batch.input_ids == bb.image_token_id, torch.zeros(3, k + 1, dtype=torch.bool)], 1)
    at[:, embeds.shape[1] : embeds.shape[1] + k] = True
    per_pos = torch.zeros(rows.shape[0], 3, full.shape[1], rows.shape[-1])
    per_pos[:, at & (torch.arange(full.shape[1]) < embeds.shape[1])] = rows
    per_pos[:, :, embeds.shape[1] : embeds.shape[1] + k] = replayed
    with torch.no_grad():
        ref = vm.model.model.language_model(
            inputs_embeds=full,
            attention_mask=mask,
            position_ids=torch.cat([positions, pos], 2),
            visual_pos_masks=at,
            deepstack_visual_embeds=[p[at] for p in per_pos],
        ).last_hidden_state[:, -(k + 1) :]
    assert (outs[-1] - ref).abs().max() <= 1e-5
    # the hook itself: a soft-mix token gets the weighted sum of its sources' rows
    soft = VisualSources.replay(
        type(rep)(
            rep.index, rep.mask, rep.weights, rep.tokens.sum(1, keepdim=True), rep.mask.any(1, keepdim=True)
        ),
        visual,
    )
    kw = bb.decoder_inputs(soft)
    assert kw["visual_pos_masks"].tolist() == [[True, False]] * 3
    for s in range(rows.shape[0]):
        assert torch.allclose(kw["deepstack_visual_embeds"][s], replayed[s].sum(1), atol=1e-6)


def test_moe_variant_runs_cached_equals_recompute_and_round_trips(batch3, tmp_path):
    model, processor = vedas.tiny_model("qwen3_vl_moe", hidden=64, layers=2, heads=4, kv_heads=2)
    assert type(model).__name__ == "Qwen3VLMoeForConditionalGeneration"
    vm = VedasModel(model, processor, LatentConfig(latents=2, replay_k=4, max_new_tokens=4))
    images, questions, choices = batch3
    fast = vm.generate(images, questions, choices, return_details=True)
    slow = vm.generate(images, questions, choices, engine="recompute", return_details=True)
    assert (fast.latents - slow.latents).abs().max() <= 1e-4
    assert fast.replay_indices == slow.replay_indices and fast.texts == slow.texts
    again = vedas.load(vm.save(tmp_path / "moe"))
    assert type(again.backbone).__name__ == "Qwen3VLMoeBackbone"
    assert again.generate(images, questions, choices, return_details=True).token_ids == fast.token_ids


@pytest.mark.slow
def test_train_eval_infer_analyze_on_qwen3_vl(tmp_path, make_image):
    """The vedas recipe (curriculum, SCF-VR through the Qwen3-VL tower, routing, LoRA) trains a tiny
    Qwen3-VL; eval, infer and analyze run on the checkpoint (in process)."""
    from pathlib import Path

    from vedas.cli import main
    from vedas.data import synth
    from vedas.method.routing import routing_module

    root = Path(__file__).resolve().parents[2]
    data = tmp_path / "synth"
    synth.write(data, train=8, test=3, seed=0)
    cfg = yaml.safe_load((root / "configs/synthetic_tiny.yaml").read_text())
    cfg["model"].update(arch="qwen3_vl", vision="merger")
    cfg["model"]["tiny"] = {
        "hidden": 64,
        "layers": 2,
        "heads": 4,
        "kv_heads": 2,
        "vision_depth": 1,
        "vision_hidden": 32,
        "max_pixels": 128 * 128,
    }
    cfg["data"].update(path=str(data), limit=8)
    cfg["latent"] = {"latents": 2, "replay_k": 4}
    cfg["routing"] = {"layers": "all", "alpha": 4, "depth": 1}
    cfg["lora"] = {"enabled": True, "r": 4, "alpha": 8}
    cfg["optim"].update(batch_size=4, epochs=3, warmup_ratio=0.0)
    cfg["run"] = {"output_dir": str(tmp_path / "run"), "progress": False, "log_every": 1}
    (tmp_path / "q3.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    assert main(["train", "--config", str(tmp_path / "q3.yaml")]) == 0
    ckpt = tmp_path / "run" / "final"
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert any(r.get("recon", 0) > 0 for r in rows)  # SCF-VR ran through the Qwen3-VL tower
    vm = vedas.load(ckpt)
    assert vm.model.config.model_type == "qwen3_vl" and routing_module(vm) is not None
    rep = tmp_path / "rep" / "report.json"
    assert main(["eval", "--checkpoint", str(ckpt), "--data", f"synthetic:{data}", "--out", str(rep)]) == 0
    assert json.loads(rep.read_text())["n"] == 3
    make_image(96, 160, 0).save(tmp_path / "img.png")
    args = ["--checkpoint", str(ckpt), "--image", str(tmp_path / "img.png"), "--question", "How many?"]
    assert main(["infer", *args, "--max-new-tokens", "3"]) == 0
    out = tmp_path / "norms"
    assert (
        main(
            [
                "analyze",
                "norms",
                "--checkpoint",
                str(ckpt),
                "--data",
                f"synthetic:{data}",
                "--n",
                "3",
                "--out",
                str(out),
                "--no-progress",
            ]
        )
        == 0
    )
    assert json.loads((out / "norms.json").read_text())["tokens"]["visual"] > 0


def test_demo_and_bench_take_the_arch(tmp_path):
    """``vedas demo/bench --arch qwen3_vl``: the same job on a tiny Qwen3-VL, 36 (demo, fine preset) and 128
    (bench) visual tokens per image as on Qwen2-VL (the runs themselves: docs/results.md)."""
    from vedas.cli import build_parser
    from vedas.experiments import bench, demo

    args = build_parser().parse_args(["demo", "--quick", "--arch", "qwen3_vl"])
    size = demo.sized(args)
    cfg = demo.train_config("vedas", size, tmp_path / "data", tmp_path, seed=0)
    # 168 px is a 6 x 6 grid of Qwen2-VL's 28-px merged cells; Qwen3-VL's are 32 px, so the same grid is 192 px
    assert cfg.model.arch == "qwen3_vl" and cfg.model.tiny["max_pixels"] == 192 * 192
    assert demo.demo_pixels("qwen2_vl", 168) == 168 * 168 and demo.demo_pixels("qwen2_vl") == 112 * 112
    assert build_parser().parse_args(["bench", "--arch", "qwen3_vl"]).arch == "qwen3_vl"
    vm, images, questions, choices = bench.build(n=1, arch="qwen3_vl")
    batch = vm.prepare(images, questions, choices)
    assert type(vm.model).__name__ == "Qwen3VLForConditionalGeneration"
    assert int(batch.input_ids.eq(vm.backbone.image_token_id).sum()) == 128
