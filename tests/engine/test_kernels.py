"""The last-query recorder under each attention kernel and dtype a model may be loaded with.

What a model loaded with ``attn_implementation=…`` gets once it is a ``VedasModel``:

- ``sdpa`` and ``eager`` → the SDPA kernel wrapped by the recorder (``vedas_sdpa``): the engine
  never runs eager attention (the maps it would build are what the recorder avoids);
- ``flash_attention_2`` → the flash kernel wrapped (``vedas_flash_attention_2``), GPU only.

In every case the recorded row is computed in float32 from the kernel's own q and k, so in
bf16 it differs from eager's bf16-rounded maps only by that rounding. Both recorders (the
``ContextVar`` one of the cached engine and the module one of the static engine) give it.
"""

from __future__ import annotations

import pytest
import torch
from transformers.utils import is_flash_attn_2_available

import vedas
from numerics import assert_close, assert_runs_agree, model_depth, model_width, traced
from vedas.config import LatentConfig
from vedas.engine.attention import attention_implementation
from vedas.engine.inputs import embed_prompt
from vedas.engine.runners import CachedRunner, eager_attention, make_runner
from vedas.engine.static import compile_settings
from vedas.model import VedasModel


def _eager_rows(vm, embeds, positions, mask):
    with eager_attention(vm.model), torch.no_grad():
        out = vm.backbone.decoder()(
            inputs_embeds=embeds, attention_mask=mask, position_ids=positions, output_attentions=True
        )
    return torch.stack([a[:, :, -1, :].float() for a in out.attentions]).mean(dim=(0, 2))


def _rows(vm, batch, engine):
    embeds, _, positions = embed_prompt(vm.backbone, batch)
    if engine == "cached":
        runner = CachedRunner(vm.backbone)
    else:
        with compile_settings(None):
            runner = make_runner("static", vm.backbone, reserve=8)
    with torch.no_grad():
        _, row = runner(embeds, positions, batch.attention_mask, record=True)
    return row, _eager_rows(vm, embeds, positions, batch.attention_mask)


@pytest.mark.parametrize("base", ["sdpa", "eager"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_recorder_row_under_each_cpu_kernel_and_dtype(arch, batch3, base, dtype):
    model, processor = vedas.tiny_model(
        arch, hidden=64, layers=2, heads=4, kv_heads=2, seed=0, attn_implementation=base
    )
    vm = VedasModel(model.to(dtype), processor, LatentConfig(latents=2, replay_k=6, max_new_tokens=4))
    assert attention_implementation(vm.model) == "vedas_sdpa"
    batch = vm.prepare(*batch3)
    # every comparison is of two computations (SDPA vs eager, the cached vs the static cache's kernel
    # call), so within the dtype's bound (tests/numerics.py); in bf16 eager also rounds q·Kᵀ and
    # the probabilities to bf16. The rows were asserted 1e-6 apart before, which held only on
    # the CPU it was written on (bf16 qwen3_vl/chameleon rows 4.5e-6 to 1.1e-5 apart elsewhere).
    close = {"dtype": dtype, "depth": model_depth(vm.model), "width": model_width(vm.model)}
    rows = {}
    for engine in ("cached", "static"):
        row, ref = _rows(vm, batch, engine)
        assert row.dtype == torch.float32 and row.shape == ref.shape
        assert_close(row, ref, **close)
        assert torch.allclose(row.sum(-1), torch.ones(3), atol=1e-5)
        assert row[batch.attention_mask == 0].abs().max() == 0
        rows[engine] = row
    assert_close(rows["static"], rows["cached"], **close)


@pytest.mark.gpu
@pytest.mark.skipif(
    not is_flash_attn_2_available(),
    reason="flash-attn 2 is not installed (needs CUDA: pip install flash-attn)",
)
def test_flash_attention_2_recorder_and_engine(arch, batch3):
    model, processor = vedas.tiny_model(
        arch, hidden=64, layers=4, heads=4, kv_heads=2, seed=0, attn_implementation="flash_attention_2"
    )
    vm = VedasModel(model.to("cuda", torch.bfloat16), processor, LatentConfig(latents=3, replay_k=6))
    assert attention_implementation(vm.model) == "vedas_flash_attention_2"
    batch = vm.prepare(*batch3)
    row, ref = _rows(vm, batch, "cached")
    assert_close(row, ref, dtype=torch.bfloat16, depth=model_depth(vm.model), width=model_width(vm.model))
    slow = traced(vm, batch3, engine="recompute", max_new_tokens=4)
    assert_runs_agree(vm, slow, traced(vm, batch3, max_new_tokens=4))
    with pytest.raises(ValueError, match="the static cache needs the sdpa kernel"):
        vm.generate(*batch3, engine="static")
