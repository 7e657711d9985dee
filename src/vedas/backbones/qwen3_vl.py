"""Qwen3-VL (``Qwen/Qwen3-VL-2B/4B/8B-Instruct``): classes, DeepStack, a tiny config.

What differs from Qwen2-VL, all handled by the model's own code except the last point:

- patch size 16 (a merged token covers 32×32 pixels), image mean/std 0.5, and a learned
  position embedding resampled to each image's grid;
- interleaved M-RoPE (``mrope_section`` [24, 20, 20] for head_dim 128), computed by the text
  model's own rotary from (3, B, L) positions (the fourth, text row is optional and only
  feeds the mask builder; ``get_rope_index`` gives the prompt's 3 rows);
- **DeepStack**: the vision tower also emits rows from layers ``deepstack_visual_indexes``;
  the text model adds row s to the hidden states at the visual positions right after decoder
  layer s (``visual_pos_masks``, ``deepstack_visual_embeds``). The engine feeds only
  embeddings, so :meth:`Qwen3VLBackbone.decoder_inputs` builds those two arguments for every
  pass from its :class:`~vedas.engine.sources.VisualSources`: the prompt's image tokens get
  their own rows, exactly as the model's forward gives them; a replayed token gets its
  source token's rows times its replay weight, the same ``Diag(w)`` that scales its input
  embedding (docs/design.md#deepstack-replay).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from transformers import (
    Qwen3VLConfig,
    Qwen3VLForConditionalGeneration,
    Qwen3VLProcessor,
)

from vedas.backbones.qwen_vl import QwenVLBackbone, without_video

if TYPE_CHECKING:
    from vedas.engine.sources import VisualSources

MODEL_TYPE = "qwen3_vl"
MODEL_CLASS = Qwen3VLForConditionalGeneration
PROCESSOR_CLASS = without_video(Qwen3VLProcessor)
PATCH_SIZE = 16
IMAGE_MEAN = IMAGE_STD = (0.5, 0.5, 0.5)


class Qwen3VLBackbone(QwenVLBackbone):
    arch = MODEL_TYPE

    def image_inputs(
        self, pixel_values: torch.Tensor, image_grid_thw: torch.Tensor
    ) -> tuple[list[torch.Tensor], torch.Tensor | None]:
        out = self.inner().get_image_features(pixel_values, image_grid_thw)
        side = torch.stack([torch.cat(rows, 0) for rows in out.deepstack_features])  # (S, N_total, D)
        return list(out.pooler_output), side

    def decoder_inputs(self, sources: VisualSources) -> dict[str, Any]:
        """``visual_pos_masks`` and ``deepstack_visual_embeds`` of one pass (``{}`` if it has no visual position)."""
        visual = sources.visual
        if visual is None or visual.side is None:
            return {}
        at = sources.is_visual
        if not bool(at.any()):
            return {}
        mixed = sources.mix(visual.side)  # (S, B, n, D)
        return {"visual_pos_masks": at, "deepstack_visual_embeds": [rows[at] for rows in mixed]}


def _interleaved_section(head_dim: int) -> list[int]:
    """Qwen3-VL's (t, h, w) split of head_dim/2 frequencies: [24, 20, 20] at head_dim 128, scaled."""
    half = head_dim // 2
    hw = half * 20 // 64
    return [half - 2 * hw, hw, hw]


def tiny_parts(text: dict[str, Any], vision_depth: int, vision_hidden: int, vision_heads: int):
    """The text and vision config dicts of a tiny Qwen3-VL (shared with the MoE variant)."""
    heads = text["num_attention_heads"]
    head_dim = text["hidden_size"] // heads
    rope = {
        **text["rope_parameters"],
        "mrope_section": _interleaved_section(head_dim),
        "mrope_interleaved": True,
    }
    text = {**text, "head_dim": head_dim, "rope_parameters": rope}
    # DeepStack rows from the first ViT blocks, fed after the first decoder layers; at least one
    # decoder layer is left without, as in the real models (3 of 36 layers at 8B)
    n_stack = max(1, min(vision_depth, text["num_hidden_layers"] - 1))
    vision = dict(
        depth=vision_depth,
        hidden_size=vision_hidden,
        intermediate_size=2 * vision_hidden,
        num_heads=vision_heads,
        out_hidden_size=text["hidden_size"],
        patch_size=PATCH_SIZE,
        spatial_merge_size=2,
        temporal_patch_size=2,
        num_position_embeddings=64,
        deepstack_visual_indexes=list(range(n_stack)),
    )
    return text, vision


def tiny_config(text: dict[str, Any], vision_depth: int, vision_hidden: int, vision_heads: int, **ids: int):
    """A Qwen3VLConfig: interleaved M-RoPE, patch 16, DeepStack after the first decoder layer(s)."""
    text, vision = tiny_parts(text, vision_depth, vision_hidden, vision_heads)
    return Qwen3VLConfig(text_config=text, vision_config=vision, **ids)


ADAPTER = Qwen3VLBackbone
