"""Chameleon behind the Backbone Protocol: VQ codes as visual tokens, 1-D rope, the VQ-VAE crop path.

Every check runs a tiny random ``ChameleonForConditionalGeneration`` (64 px images, an 8×8 VQ
grid of 64 codes) on a batch of three prompts of different lengths with non-square images, and
compares against an independent reference: the recompute oracle, each sample alone, the model's
``get_image_tokens`` and the processor run on a PIL crop. ``chameleon`` is in ``tests/conftest.py``'s
ARCHS too, so the shared engine, routing, checkpoint, CLI and evaluation tests run on it as well
(cached == recompute, batched == alone, T_r = 0 == HF ``generate``, no token replayed twice,
save → ``vedas.load``).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import vedas
from vedas.backbones.chameleon import ChameleonBackbone, visible_box
from vedas.config import LatentConfig
from vedas.engine.inputs import embed_prompt
from vedas.engine.loop import LatentLoop
from vedas.engine.runners import make_runner
from vedas.method import scfvr
from vedas.method.scfvr import SCFVRConfig
from vedas.model import VedasModel

CFG = LatentConfig(latents=3, replay_k=6, max_new_tokens=6)


@pytest.fixture(scope="module")
def cham():
    torch.manual_seed(0)
    return vedas.tiny_model("chameleon", hidden=64, layers=2, heads=4, kv_heads=2, seed=0)


@pytest.fixture
def cvm(cham) -> VedasModel:
    return VedasModel(*cham, CFG)


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    from vedas.data import load as load_data
    from vedas.data import synth

    out = tmp_path_factory.mktemp("synth")
    synth.write(out, train=4, test=1, seed=0)
    return list(load_data("synthetic", path=str(out), split="train", limit=3))


def _run(vm, batch, engine="cached", **kw):
    images, questions, choices = batch
    return vm.generate(images, questions, choices, engine=engine, return_details=True, **kw)


def test_the_processor_center_crops_to_one_square_vq_grid(cvm, batch3):
    """Non-square images come out square (the processor's center crop): 8×8 codes between start/end tokens."""
    batch = cvm.prepare(*batch3)
    bb = cvm.backbone
    assert isinstance(bb, ChameleonBackbone) and (bb.patch_size, bb.merge_size) == (8, 1)
    assert tuple(batch.pixel_values.shape) == (3, 3, 64, 64)
    assert (
        batch.image_grid_thw.tolist() == [[1, 8, 8]] * 3
        and bb.merged_grids(batch.image_grid_thw) == [(8, 8)] * 3
    )
    lengths = batch.attention_mask.sum(1)
    assert len(set(lengths.tolist())) == 3 and bool((batch.attention_mask[:, -1] == 1).all())  # left padding
    for row, mask in zip(batch.input_ids, batch.attention_mask):
        ids = row[mask.bool()].tolist()
        start = ids.index(bb.image_start_token_id)
        assert (
            ids[start + 1 : start + 65] == [bb.image_token_id] * 64
            and ids[start + 65] == bb.image_end_token_id
        )
    assert batch.mm_token_type_ids.sum(1).tolist() == [66] * 3  # placeholders + start + end
    # the grid covers the central square of the original image (140×84: resized to 106×64, rows 21..85 kept)
    assert bb.visible_box((112, 168)) == (0, 28, 112, 140) and bb.visible_box((140, 84)) == (27, 0, 112, 84)
    assert visible_box((64, 64), 64, (64, 64)) == (0, 0, 64, 64)


def test_visible_box_is_what_the_processor_keeps(cvm, make_image):
    """The processor's pixels of a non-square image are its pixels of the visible box alone; any other
    box of that size gives other pixels. SCF-VR windows land inside the box."""
    bb, ip = cvm.backbone, cvm.processor.image_processor
    for h, w in [(112, 168), (140, 84)]:
        img = make_image(6, 6, 11).resize((w, h), Image.BICUBIC)  # smooth: resampling shifts change little
        top, left, bottom, right = bb.visible_box((h, w))
        # the central square, widened to whole pixels
        assert min(bottom - top, right - left) == min(h, w) and abs((bottom - top) - (right - left)) <= 1
        full = ip(images=[img], return_tensors="pt")["pixel_values"]
        inside = ip(images=[img.crop((left, top, right, bottom))], return_tensors="pt")["pixel_values"]
        shifted = (0, 0, right - left, bottom - top)  # the top-left square instead
        other = ip(images=[img.crop(shifted)], return_tensors="pt")["pixel_values"]
        # LANCZOS reads a few pixels across the box edge in the full image: equal up to that
        assert (full - inside).abs().mean() < 0.1 * (full - other).abs().mean()
        whole = scfvr.image_box(bb, torch.tensor([0, 0, 8, 8]), (8, 8), (h, w))
        corner = scfvr.image_box(bb, torch.tensor([7, 7, 1, 1]), (8, 8), (h, w))
        assert whole == (top, left, bottom, right) and corner[2:] == (bottom, right)


def test_visual_embeddings_are_embed_tokens_of_the_vq_ids(cvm, batch3):
    batch = cvm.prepare(*batch3)
    bb = cvm.backbone
    with torch.no_grad():
        codes = cvm.model.model.get_image_tokens(batch.pixel_values)  # (3, 64) vocabulary ids
        embeds, visual, positions = embed_prompt(bb, batch)
        emb = cvm.model.model.embed_tokens
        assert torch.equal(visual.features, emb(codes))  # raster order, one image per sample
        ids = torch.where(batch.input_ids == bb.image_token_id, 0, batch.input_ids)
        ids[batch.input_ids == bb.image_token_id] = codes.flatten().long()
        assert torch.equal(embeds, emb(ids))  # the prompt with its placeholders filled
    image_ids = set(cvm.model.model.vocabulary_mapping.image_tokens)
    assert set(codes.flatten().tolist()) <= image_ids and len(image_ids) == 64
    # greedy decoding never emits an image code (HF's forward masks them too), the placeholder or a marker
    assert set(bb.suppressed_token_ids()) == image_ids | {
        bb.image_token_id,
        bb.image_start_token_id,
        bb.image_end_token_id,
    }
    # 1-D positions, counted over real tokens, equal on all three rows
    assert torch.equal(positions[0], positions[1]) and torch.equal(positions[0], positions[2])
    for p, m in zip(positions[0], batch.attention_mask):
        assert p[m.bool()].tolist() == list(range(int(m.sum())))
    # and the replay feeds those rows: the replayed block is features[I] × the replay weights
    loop = LatentLoop(bb, cvm.config, make_runner("cached", bb))
    with torch.no_grad():
        run = loop.latent_steps(loop.prefill(batch), steps=2)
    for rep in run.replays:
        feats = emb(codes).gather(1, rep.index[..., None].expand(-1, -1, emb.weight.shape[1]))
        expected = feats * rep.weights[..., None]
        assert torch.allclose(rep.tokens[rep.token_mask], expected[rep.mask], atol=1e-6)


def test_every_mode_batched_equals_each_sample_alone(cvm, batch3):
    images, questions, choices = batch3
    for mode in ("latent", "cot", "no_cot"):  # vedas: tests/engine/test_engine.py (ARCHS has chameleon)
        together = _run(cvm, batch3, mode=mode)
        for i in range(3):
            alone = cvm.generate([images[i]], [questions[i]], [choices[i]], mode=mode, return_details=True)
            assert alone.replay_indices[0] == together.replay_indices[i], mode
            assert alone.token_ids[0] == together.token_ids[i], mode
            if mode in ("vedas", "latent"):
                assert (alone.latents[0] - together.latents[i]).abs().max() <= 1e-4


def test_scfvr_crop_path_equals_the_processor_and_vq_vae_on_the_pil_crop(cvm, make_image):
    img = make_image(112, 168, 7)
    bb = cvm.backbone
    box = (20, 50, 84, 114)  # (top, left, bottom, right): a 64×64 crop, the encoder's input size
    assert bb.crop_size() == (64, 64)
    pil = img.crop((box[1], box[0], box[3], box[2]))
    x = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1)
    crop = x[:, box[0] : box[2], box[1] : box[3]]
    with torch.no_grad():
        ours = bb.encode_crops([crop])
        pv = cvm.processor.image_processor(images=[pil], return_tensors="pt")["pixel_values"]
        codes = cvm.model.model.get_image_tokens(pv)
        ref = cvm.model.model.embed_tokens(codes).mean(1)
        assert torch.equal(bb.image_token_ids(bb.normalize(crop[None])), codes)
    assert torch.allclose(ours, ref, atol=1e-6)
    # a batch tensor is resized to the crop size first; crops of one size share one VQ-VAE call
    many = bb.encode_crops(torch.rand(3, 3, 30, 45))
    assert many.shape == (3, 64) and not torch.allclose(many[0], many[1])


def test_training_loss_and_gradients_equal_the_recompute_oracle(cham, records):
    """Cached training passes (curriculum layout, SCF-VR through the VQ-VAE) equal the uncached oracle's."""
    import copy

    from vedas.method.curriculum import CurriculumConfig, layout, record_steps
    from vedas.train.objective import LatentObjective, collate

    model, processor = copy.deepcopy(cham[0]), cham[1]
    vm = VedasModel(model, processor, LatentConfig(latents=3, replay_k=6))
    lays = [
        layout("vedas", record_steps(r.steps, r.rationale, 3), r.answer, 2, 3, CurriculumConfig())
        for r in records[:3]
    ]
    batch = collate(vm, records[:3], lays, "vedas")
    results = []
    for engine in ("cached", "recompute"):
        obj = LatentObjective(vm, "vedas", vm.config, SCFVRConfig(), engine=engine)
        torch.manual_seed(0)
        obj.sr = LatentObjective(vm, "vedas", vm.config, SCFVRConfig()).sr
        vm.model.zero_grad()
        out = obj(batch)
        out["loss"].backward()
        grads = {n: p.grad.clone() for n, p in vm.model.named_parameters() if p.grad is not None}
        results.append((out["ce"], out["recon"], grads))
    (ce_a, rec_a, g_a), (ce_b, rec_b, g_b) = results
    assert abs(ce_a.item() - ce_b.item()) < 1e-5 and abs(rec_a.item() - rec_b.item()) < 1e-5
    assert rec_a.item() > 0 and g_a.keys() == g_b.keys() and len(g_a) > 10
    assert not any(n.startswith("model.vqmodel.") for n in g_a)  # no gradient reaches the VQ-VAE
    for n in g_a:
        assert torch.allclose(g_a[n], g_b[n], atol=1e-5, rtol=1e-4), n
