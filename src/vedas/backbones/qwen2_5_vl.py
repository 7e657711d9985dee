"""Qwen2.5-VL (``Qwen/Qwen2.5-VL-3B-Instruct``, ``-7B-Instruct``): classes and a tiny config.

Its vision tower uses windowed attention and restores raster order before the merger
output, so merged visual tokens come out in the same row-major order as Qwen2-VL's.
"""

from __future__ import annotations

from typing import Any

from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor

from vedas.backbones.qwen_vl import QwenVLBackbone, without_video

MODEL_TYPE = "qwen2_5_vl"
MODEL_CLASS = Qwen2_5_VLForConditionalGeneration
PROCESSOR_CLASS = without_video(Qwen2_5_VLProcessor)


class Qwen2_5_VLBackbone(QwenVLBackbone):
    arch = MODEL_TYPE


def tiny_config(text: dict[str, Any], vision_depth: int, vision_hidden: int, vision_heads: int, **ids: int):
    """A Qwen2_5_VLConfig with a windowed-attention vision tower (last block full attention)."""
    vision = dict(
        depth=vision_depth,
        hidden_size=vision_hidden,
        intermediate_size=2 * vision_hidden,
        num_heads=vision_heads,
        out_hidden_size=text["hidden_size"],
        patch_size=14,
        spatial_merge_size=2,
        temporal_patch_size=2,
        window_size=56,
        fullatt_block_indexes=[vision_depth - 1],
    )
    return Qwen2_5_VLConfig(text_config=text, vision_config=vision, **ids)


ADAPTER = Qwen2_5_VLBackbone
