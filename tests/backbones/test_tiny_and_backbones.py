"""Tiny models of the real architectures, and the backbone adapters, against HF's own code."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import AutoModelForImageTextToText

import vedas
from vedas.backbones import backbone_for
from vedas.backbones.tiny import _mrope_section
from vedas.tokens import INIT_FROM, LATENT_TOKENS, add_latent_tokens


def qwen_only(arch: str) -> None:
    if arch == "chameleon":
        pytest.skip(
            "Qwen-VL patches and M-RoPE; Chameleon's VQ grid and crops: tests/backbones/test_chameleon.py"
        )


def test_tiny_model_is_the_real_architecture(tiny, arch):
    model, processor = tiny
    expected = {
        "qwen2_vl": "Qwen2VLForConditionalGeneration",
        "qwen2_5_vl": "Qwen2_5_VLForConditionalGeneration",
        "qwen3_vl": "Qwen3VLForConditionalGeneration",
        "chameleon": "ChameleonForConditionalGeneration",
    }
    assert type(model).__name__ == expected[arch]
    assert "video_processor" not in processor.get_attributes()
    tok = processor.tokenizer
    ids = tok.convert_tokens_to_ids(list(LATENT_TOKENS))
    assert len(set(ids)) == 3 and max(ids) < model.get_input_embeddings().weight.shape[0]
    src = tok.encode(INIT_FROM, add_special_tokens=False)[-1]
    emb, head = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    for i in ids:  # copied from an existing token, not left random, not assigned to themselves
        assert torch.equal(emb[i], emb[src]) and torch.equal(head[i], head[src])
    if arch != "chameleon":  # plain 1-D rope there
        assert sum(model.config.get_text_config().rope_parameters["mrope_section"]) * 2 == 64 // 4


@pytest.mark.parametrize(("head_dim", "section"), [(128, [16, 24, 24]), (64, [8, 12, 12]), (32, [4, 6, 6])])
def test_mrope_section_follows_qwen(head_dim, section):
    assert _mrope_section(head_dim) == section


def test_add_latent_tokens_is_idempotent(tiny):
    model, processor = tiny
    n = len(processor.tokenizer)
    first = add_latent_tokens(model, processor.tokenizer)
    assert add_latent_tokens(model, processor.tokenizer) == first and len(processor.tokenizer) == n


def test_save_pretrained_round_trip(tiny, tmp_path):
    model, processor = tiny
    model.save_pretrained(tmp_path, safe_serialization=True)
    processor.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    again = AutoModelForImageTextToText.from_pretrained(tmp_path, use_safetensors=True)
    for (k, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), k
    proc2 = type(processor).from_pretrained(tmp_path)
    assert proc2.tokenizer.get_vocab() == processor.tokenizer.get_vocab()


def test_patchify_matches_the_image_processor(tiny, make_image, arch):
    qwen_only(arch)
    model, processor = tiny
    bb = backbone_for(model, processor)
    f = bb.patch_size * bb.merge_size
    img = make_image(3 * f, 5 * f, 5)
    ip = processor.image_processor
    ref = ip(images=[img], return_tensors="pt", do_resize=False)
    x = torch.tensor(np.asarray(img)).permute(2, 0, 1).float()[None] / 255
    mean, std = torch.tensor(ip.image_mean).view(1, 3, 1, 1), torch.tensor(ip.image_std).view(1, 3, 1, 1)
    pv, grid = bb.patchify((x - mean) / std)
    assert torch.equal(grid, ref["image_grid_thw"])
    assert (pv - ref["pixel_values"]).abs().max() < 1e-5


def test_grids_positions_and_visual_features(vm, make_image, arch):
    qwen_only(arch)
    img = make_image(
        84, 140, 6
    )  # patch 14: 6 x 10 patches -> 3 x 5 merged tokens; patch 16: 96 x 128 px -> 3 x 4
    batch = vm.prepare([img], ["What?"])
    bb = vm.backbone
    gh, gw = (3, 5) if bb.patch_size == 14 else (3, 4)
    assert bb.merged_grids(batch.image_grid_thw) == [(gh, gw)]
    feats = bb.visual_features(batch.pixel_values, batch.image_grid_thw)
    assert feats[0].shape == (gh * gw, vm.model.config.get_text_config().hidden_size)
    ref = vm.model.model.get_image_features(batch.pixel_values, batch.image_grid_thw).pooler_output[0]
    assert torch.equal(feats[0], ref)
    pos = bb.prompt_positions(
        batch.input_ids, batch.mm_token_type_ids, batch.image_grid_thw, batch.attention_mask
    )
    img_pos = pos[:, 0, batch.input_ids[0] == bb.image_token_id]
    start = int(img_pos[0, 0])
    # raster order: token j sits at row j // G_w, column j % G_w (never 1-D positions for the image)
    rows, cols = torch.arange(gh * gw) // gw, torch.arange(gh * gw) % gw
    assert torch.equal(img_pos[1] - start, rows) and torch.equal(img_pos[2] - start, cols)


def test_encode_crops_uses_the_vision_tower(vm, arch):
    qwen_only(arch)
    torch.manual_seed(0)
    crops = torch.rand(3, 3, 30, 45)
    out = vm.backbone.encode_crops(crops)
    assert out.shape == (3, vm.model.config.get_text_config().hidden_size)
    assert not torch.allclose(out[0], out[1])
    # equal to the processor path on the same resized pixels (no PIL in the training step, same numbers)
    h, w = vm.backbone.crop_size()
    resized = torch.nn.functional.interpolate(crops, size=(h, w), mode="bilinear", align_corners=False)
    ip = vm.processor.image_processor
    norm = (resized - torch.tensor(ip.image_mean).view(1, 3, 1, 1)) / torch.tensor(ip.image_std).view(
        1, 3, 1, 1
    )
    ref = ip(
        images=list(norm.numpy()), return_tensors="pt", do_resize=False, do_rescale=False, do_normalize=False
    )
    feats = vm.backbone.visual_features(ref["pixel_values"], ref["image_grid_thw"])
    assert torch.allclose(out, torch.stack([f.mean(0) for f in feats]), atol=1e-5)


def test_unknown_arch_is_a_clear_error():
    with pytest.raises(ValueError, match=r"arch='llava' is not supported"):
        vedas.tiny_model("llava")


def test_a_backbone_is_one_file(tmp_path, monkeypatch):
    """A module in the package naming MODEL_TYPE and ADAPTER is a backbone: nothing else to register.
    Here a copy of qwen2_vl.py under another model_type, in a folder added to the package's path."""
    import inspect

    import vedas.backbones as backbones
    from vedas.backbones import qwen2_vl

    source = inspect.getsource(qwen2_vl).replace('MODEL_TYPE = "qwen2_vl"', 'MODEL_TYPE = "qwen2_vl_copy"')
    (tmp_path / "qwen2_vl_copy.py").write_text(source)
    monkeypatch.setattr(backbones, "__path__", [*backbones.__path__, str(tmp_path)])
    found = backbones._discover()
    assert set(found) == {"chameleon", "qwen2_5_vl", "qwen2_vl", "qwen3_vl", "qwen3_vl_moe", "qwen2_vl_copy"}
    assert found["qwen2_vl_copy"].ADAPTER.__name__ == "Qwen2VLBackbone"
    # the helpers (base, qwen_vl, tiny) name no MODEL_TYPE/ADAPTER: not backbones
    assert set(backbones._discover()) - {"qwen2_vl_copy"} == set(backbones.ARCHS)


@pytest.mark.parametrize("arch", ["qwen2_vl", "chameleon"])
def test_vision_seed_fixes_the_tower_and_nothing_else(arch):
    """``vision_seed``: the tower is one draw whatever ``seed`` and the tokenizer's vocabulary; the
    rest of the model is exactly what ``seed`` alone builds; without it nothing changes."""
    from vedas.backbones.tiny import vision_tower

    corpus = ["the cat sat on the mat " * 20, "a red square left of a blue circle"]
    a, _ = vedas.tiny_model(arch, seed=1, vision_seed=7)
    b, _ = vedas.tiny_model(arch, seed=2, vision_seed=7, bpe_corpus=corpus, bpe_vocab=300)
    plain, _ = vedas.tiny_model(arch, seed=1)
    ta, tb, tp = (vision_tower(m).state_dict() for m in (a, b, plain))
    assert all(torch.equal(ta[k], tb[k]) for k in ta)
    assert any(not torch.equal(ta[k], tp[k]) for k in ta)
    towers = {id(p) for p in vision_tower(a).parameters()}
    rest = [(n, p) for n, p in a.named_parameters() if id(p) not in towers]
    plain_params = dict(plain.named_parameters())
    assert rest and all(torch.equal(p, plain_params[n]) for n, p in rest)
