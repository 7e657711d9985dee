"""Backbone adapters, one file per architecture, looked up by ``config.model_type``."""

from __future__ import annotations

from types import ModuleType
from typing import Any

from vedas.backbones import chameleon, qwen2_5_vl, qwen2_vl, qwen3_vl, qwen3_vl_moe
from vedas.backbones.base import Backbone

ARCHS: dict[str, ModuleType] = {
    m.MODEL_TYPE: m for m in (qwen2_vl, qwen2_5_vl, qwen3_vl, qwen3_vl_moe, chameleon)
}
_ADAPTERS = {
    qwen2_vl.MODEL_TYPE: qwen2_vl.Qwen2VLBackbone,
    qwen2_5_vl.MODEL_TYPE: qwen2_5_vl.Qwen2_5_VLBackbone,
    qwen3_vl.MODEL_TYPE: qwen3_vl.Qwen3VLBackbone,
    qwen3_vl_moe.MODEL_TYPE: qwen3_vl_moe.Qwen3VLMoeBackbone,
    chameleon.MODEL_TYPE: chameleon.ChameleonBackbone,
}


def arch_module(arch: str) -> ModuleType:
    if arch not in ARCHS:
        raise ValueError(f"arch={arch!r} is not supported; choose one of {sorted(ARCHS)}")
    return ARCHS[arch]


def backbone_for(model: Any, processor: Any) -> Backbone:
    """The adapter for a loaded HF model, chosen by its ``config.model_type``."""
    arch = model.config.model_type
    if arch not in _ADAPTERS:
        raise ValueError(f"model_type {arch!r} has no backbone adapter; supported: {sorted(_ADAPTERS)}")
    return _ADAPTERS[arch](model, processor)


__all__ = ["ARCHS", "Backbone", "arch_module", "backbone_for"]
