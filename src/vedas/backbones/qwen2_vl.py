"""Qwen2-VL (``Qwen/Qwen2-VL-2B-Instruct``, ``-7B-Instruct``): classes and a tiny config."""

from __future__ import annotations

from typing import Any

from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

from vedas.backbones.qwen_vl import Qwen2VLProcessorNoVideo, QwenVLBackbone

MODEL_TYPE = "qwen2_vl"
MODEL_CLASS = Qwen2VLForConditionalGeneration
PROCESSOR_CLASS = Qwen2VLProcessorNoVideo


class Qwen2VLBackbone(QwenVLBackbone):
    arch = MODEL_TYPE


def tiny_config(text: dict[str, Any], vision_depth: int, vision_hidden: int, vision_heads: int, **ids: int):
    """A Qwen2VLConfig: text decoder from ``text``, a small vision tower whose merger outputs the text width."""
    vision = dict(
        depth=vision_depth,
        embed_dim=vision_hidden,
        hidden_size=text["hidden_size"],
        num_heads=vision_heads,
        mlp_ratio=2,
        patch_size=14,
        spatial_merge_size=2,
        temporal_patch_size=2,
    )
    return Qwen2VLConfig(text_config=text, vision_config=vision, **ids)


ADAPTER = Qwen2VLBackbone
