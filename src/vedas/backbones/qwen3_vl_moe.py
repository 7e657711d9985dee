"""Qwen3-VL MoE (``Qwen/Qwen3-VL-30B-A3B-Instruct``): the Qwen3-VL adapter as is, a tiny MoE config.

The MoE variant differs from dense Qwen3-VL only inside the decoder MLPs (a sparse expert
block per layer); vision tower, DeepStack, M-RoPE and the ``language_model`` layout are the
same, so the adapter is :class:`~vedas.backbones.qwen3_vl.Qwen3VLBackbone` under another
model type. LoRA reaches the attention projections; the experts are fused 3-D parameters,
not ``nn.Linear`` modules, so a LoRA on MLP names leaves them untouched.
"""

from __future__ import annotations

from typing import Any

from transformers import Qwen3VLMoeConfig, Qwen3VLMoeForConditionalGeneration

from vedas.backbones.qwen3_vl import (
    IMAGE_MEAN,
    IMAGE_STD,
    PATCH_SIZE,
    PROCESSOR_CLASS,
    Qwen3VLBackbone,
    tiny_parts,
)

MODEL_TYPE = "qwen3_vl_moe"
MODEL_CLASS = Qwen3VLMoeForConditionalGeneration
__all__ = ["IMAGE_MEAN", "IMAGE_STD", "MODEL_CLASS", "MODEL_TYPE", "PATCH_SIZE", "PROCESSOR_CLASS"]


class Qwen3VLMoeBackbone(Qwen3VLBackbone):
    arch = MODEL_TYPE


def tiny_config(text: dict[str, Any], vision_depth: int, vision_hidden: int, vision_heads: int, **ids: int):
    """A Qwen3VLMoeConfig: the tiny Qwen3-VL with every decoder MLP a 4-expert, top-2 sparse block."""
    text, vision = tiny_parts(text, vision_depth, vision_hidden, vision_heads)
    text = {
        **text,
        "num_experts": 4,
        "num_experts_per_tok": 2,
        "moe_intermediate_size": text["intermediate_size"] // 2,
        "decoder_sparse_step": 1,
    }
    return Qwen3VLMoeConfig(text_config=text, vision_config=vision, **ids)


ADAPTER = Qwen3VLMoeBackbone
