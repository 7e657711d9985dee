"""vedas: multimodal latent reasoning with Visual Enhanced Depth Scaling.

    import vedas
    model, processor = vedas.tiny_model("qwen2_vl")          # offline, random weights
    vm = vedas.VedasModel(model, processor)
    texts, steps = vm.generate([image], ["How many red squares?"])
    vm.save("ckpt"); vm = vedas.load("ckpt")

The top-level names are imported lazily, so ``import vedas.data`` or ``vedas --help`` does
not pay for torch and transformers.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_LAZY = {
    "LatentConfig": "vedas.config",
    "VedasModel": "vedas.model",
    "load": "vedas.model",
    "tiny_model": "vedas.backbones.tiny",
}
__all__ = ["LatentConfig", "VedasModel", "__version__", "load", "tiny_model"]

if TYPE_CHECKING:
    from vedas.backbones.tiny import tiny_model
    from vedas.config import LatentConfig
    from vedas.model import VedasModel, load


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'vedas' has no attribute {name!r}")
