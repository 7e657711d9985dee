"""Backbone adapters, one file per architecture, looked up by ``config.model_type``.

Every module of this package that names a ``MODEL_TYPE`` and an ``ADAPTER`` is a backbone (found
when the package loads), so adding one is adding its file: the adapter (:class:`Backbone`),
``MODEL_CLASS``/``PROCESSOR_CLASS``, and for :func:`vedas.tiny_model` its tiny parts.
"""

from __future__ import annotations

import importlib
import pkgutil
from types import ModuleType
from typing import Any

from vedas.backbones.base import Backbone


def _discover() -> dict[str, ModuleType]:
    found = (
        importlib.import_module(f"{__name__}.{m.name}")
        for m in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name)
    )
    return {m.MODEL_TYPE: m for m in found if hasattr(m, "MODEL_TYPE") and hasattr(m, "ADAPTER")}


ARCHS: dict[str, ModuleType] = _discover()
_ADAPTERS = {arch: m.ADAPTER for arch, m in ARCHS.items()}


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
