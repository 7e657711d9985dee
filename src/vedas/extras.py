"""Modules a checkpoint carries beside the backbone weights (routers, heads, …).

Each extra has a name, a module and a plain-dict config. A checkpoint stores the config
under ``extras:`` in ``config.yaml`` and the weights in ``<name>.safetensors``; loading calls
the builder registered for that name to re-create and install the module, then loads its
weights. The backbone's own weights stay in HF's layout, so the base model still loads with
``from_pretrained`` alone.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from safetensors.torch import load_file, save_file
from torch import nn

# name -> builder(vedas_model, config_dict) -> installed module
BUILDERS: dict[str, Callable[[Any, dict[str, Any]], nn.Module]] = {}


def register(
    name: str,
) -> Callable[[Callable[[Any, dict[str, Any]], nn.Module]], Callable[[Any, dict[str, Any]], nn.Module]]:
    """Decorator: ``@register("routing") def build(vm, cfg) -> nn.Module``."""

    def deco(fn: Callable[[Any, dict[str, Any]], nn.Module]) -> Callable[[Any, dict[str, Any]], nn.Module]:
        BUILDERS[name] = fn
        return fn

    return deco


def save(directory: Path, name: str, module: nn.Module) -> None:
    state = {k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}
    save_file(state, str(directory / f"{name}.safetensors"))


def load(directory: Path, vm: Any, name: str, config: dict[str, Any]) -> nn.Module:
    if name not in BUILDERS:
        raise ValueError(f"checkpoint extra {name!r} has no registered builder; known: {sorted(BUILDERS)}")
    module = BUILDERS[name](vm, config)
    path = directory / f"{name}.safetensors"
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint lists extra {name!r} but {path} is missing")
    device = next(vm.model.parameters()).device
    module.load_state_dict(load_file(str(path), device=str(device)))
    return module
