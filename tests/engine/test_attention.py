"""The registered last-query recorder equals eager ``output_attentions`` (mean over layers and heads)."""

from __future__ import annotations

import torch

from vedas.engine.attention import (
    ORACLE,
    LastQueryRecorder,
    attention_implementation,
    attention_probs,
    last_query_probs,
)
from vedas.engine.inputs import embed_prompt
from vedas.engine.runners import CachedRunner, eager_attention, text_attention


def _eager_rows(vm, embeds, positions, mask):
    with eager_attention(vm.model), torch.no_grad():
        out = vm.backbone.decoder()(
            inputs_embeds=embeds, attention_mask=mask, position_ids=positions, output_attentions=True
        )
    return torch.stack([a[:, :, -1, :] for a in out.attentions]).mean(dim=(0, 2))


def test_recorder_matches_eager_on_prefill_and_cached_step(vm, batch3):
    images, questions, choices = batch3
    batch = vm.prepare(images, questions, choices)
    embeds, _, positions = embed_prompt(vm.backbone, batch)
    runner = CachedRunner(vm.backbone)
    with torch.no_grad():
        _, rec_prefill = runner(embeds, positions, batch.attention_mask, record=True)
    ref = _eager_rows(vm, embeds, positions, batch.attention_mask)
    assert attention_implementation(vm.model).startswith("vedas_")
    assert (rec_prefill - ref).abs().max() <= 1e-5
    assert torch.allclose(rec_prefill.sum(-1), torch.ones(3), atol=1e-5)
    assert rec_prefill[batch.attention_mask == 0].abs().max() == 0  # padding gets no attention

    # a cached 2-token step: the recorder sees keys of the whole history, exactly like eager on the full sequence
    new = torch.randn(3, 2, embeds.shape[-1])
    nxt = positions.max(2).values[0] + 1
    pos_new = (nxt[:, None] + torch.arange(2))[None].expand(3, -1, -1)
    with torch.no_grad():
        _, rec_step = runner(new, pos_new, torch.ones(3, 2), record=True)
    full_mask = torch.cat([batch.attention_mask, torch.ones(3, 2, dtype=torch.long)], 1)
    ref_step = _eager_rows(vm, torch.cat([embeds, new], 1), torch.cat([positions, pos_new], 2), full_mask)
    assert rec_step.shape == ref_step.shape == (3, embeds.shape[1] + 2)
    assert (rec_step - ref_step).abs().max() <= 1e-5


def test_records_once_per_decoder_layer_and_only_inside_the_context(vm, batch3):
    images, questions, _ = batch3
    batch = vm.prepare(images[:1], questions[:1])
    embeds, _, positions = embed_prompt(vm.backbone, batch)
    decoder = vm.backbone.decoder()
    with torch.no_grad():
        with LastQueryRecorder() as rec:
            decoder(inputs_embeds=embeds, attention_mask=batch.attention_mask, position_ids=positions)
        assert rec.calls == len(vm.backbone.decoder_layers())  # the vision tower is not recorded
        decoder(inputs_embeds=embeds, attention_mask=batch.attention_mask, position_ids=positions)
    assert rec.calls == len(vm.backbone.decoder_layers())


def test_last_query_probs_mask_forms_agree():
    """4-D boolean, 4-D additive and 2-D padding masks give the same row."""
    torch.manual_seed(0)
    q, k = torch.randn(2, 4, 5, 8), torch.randn(2, 2, 5, 8)
    pad = torch.tensor([[0, 1, 1, 1, 1], [1, 1, 1, 1, 1]])
    causal = torch.ones(5, 5).tril().bool()
    bool4 = (causal[None] & pad[:, None, :].bool())[:, None]
    add4 = torch.zeros(bool4.shape).masked_fill(~bool4, torch.finfo(torch.float32).min)
    a, b, c = (last_query_probs(q, k, m, 0.3) for m in (bool4, add4, pad))
    assert torch.allclose(a, b, atol=1e-6) and torch.allclose(a, c, atol=1e-6)
    assert a[0, :, 0].abs().max() == 0


def test_attention_probs_of_every_row_add_the_causal_pattern_a_2d_mask_lacks():
    torch.manual_seed(0)
    q, k = torch.randn(2, 4, 5, 8), torch.randn(2, 2, 5, 8)
    pad = torch.tensor([[0, 1, 1, 1, 1], [1, 1, 1, 1, 1]])
    bool4 = (torch.ones(5, 5).tril().bool()[None] & pad[:, None, :].bool())[:, None]
    a, b = attention_probs(q, k, bool4, 0.3), attention_probs(q, k, pad, 0.3)
    assert torch.allclose(a, b, atol=1e-6)
    assert torch.allclose(attention_probs(q, k, None, 0.3)[1], a[1], atol=1e-6)  # no padding in row 1
    assert a[1].triu(1).abs().max() == 0  # no query sees a later key
    assert a[0, :, 1:, 0].abs().max() == 0  # nor padding
    assert torch.allclose(a[0, :, 0], torch.full((4, 5), 0.2))  # a fully masked (padded) query: uniform
    assert torch.equal(
        attention_probs(q[:, :, -1:], k, bool4, 0.3)[:, :, 0], last_query_probs(q, k, bool4, 0.3)
    )


def test_oracle_maps_equal_eager_maps_in_float32(vm, batch3):
    """The recompute oracle's maps (float32 from q and k, SDPA outputs) are eager's maps for a float32 model."""
    images, questions, choices = batch3
    batch = vm.prepare(images, questions, choices)
    embeds, _, positions = embed_prompt(vm.backbone, batch)
    args = {"inputs_embeds": embeds, "attention_mask": batch.attention_mask, "position_ids": positions}
    with torch.no_grad():
        with eager_attention(vm.model):
            ref = vm.backbone.decoder()(**args, output_attentions=True)
        with text_attention(vm.model, ORACLE):
            ours = vm.backbone.decoder()(**args, output_attentions=True)
            plain = vm.backbone.decoder()(**args)
    assert len(ours.attentions) == len(ref.attentions) == len(vm.backbone.decoder_layers())
    for a, b in zip(ours.attentions, ref.attentions):
        assert a.dtype == torch.float32 and (a - b).abs().max() <= 1e-5
    real = batch.attention_mask.bool()  # padded rows differ: SDPA leaves them 0, eager averages
    assert (ours.last_hidden_state[real] - ref.last_hidden_state[real]).abs().max() <= 1e-4
    assert plain.attentions is None  # maps only when asked for
    assert attention_implementation(vm.model).startswith("vedas_")  # switched back
