"""Modules a checkpoint carries beside the backbone weights (routers, GAP heads, …).

``vm.extras`` is an :class:`Extras` registry: each entry has a name, a module and a plain-dict
config. A checkpoint stores the configs under ``extras:`` in ``config.yaml`` and the weights in
``<name>.safetensors``; loading calls the builder registered for that name to re-create and
install the module, then loads its weights. The backbone's own weights stay in HF's layout,
so the base model still loads with ``from_pretrained`` alone.

    vm.extras.add("routing", module, {"alpha": 32})
    vm.extras.get("routing")          # the module, or None
    "routing" in vm.extras
    vm.extras.modules()               # {name: module}
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safetensors.torch import load_file, save_file
from torch import nn

Builder = Callable[[Any, dict[str, Any]], nn.Module]

# name -> builder(vedas_model, config_dict) -> installed module
BUILDERS: dict[str, Builder] = {}


def register(name: str) -> Callable[[Builder], Builder]:
    """Decorator: ``@register("routing") def build(vm, cfg) -> nn.Module``."""

    def deco(fn: Builder) -> Builder:
        BUILDERS[name] = fn
        return fn

    return deco


@dataclass
class Extra:
    module: nn.Module
    config: dict[str, Any]


class Extras:
    """The extras of one model, by name, in the order they were added."""

    def __init__(self) -> None:
        self._items: dict[str, Extra] = {}

    def add(self, name: str, module: nn.Module, config: dict[str, Any]) -> None:
        """Attach (or replace) the module ``name`` with its plain-dict config."""
        self._items[name] = Extra(module, dict(config))

    def get(self, name: str) -> nn.Module | None:
        entry = self._items.get(name)
        return entry.module if entry is not None else None

    def pop(self, name: str) -> nn.Module | None:
        entry = self._items.pop(name, None)
        return entry.module if entry is not None else None

    def modules(self) -> dict[str, nn.Module]:
        return {name: e.module for name, e in self._items.items()}

    def configs(self) -> dict[str, dict[str, Any]]:
        return {name: dict(e.config) for name, e in self._items.items()}

    def copy(self) -> Extras:
        out = Extras()
        out._items = dict(self._items)
        return out

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def save(self, directory: Path) -> None:
        """Each module's state as ``<name>.safetensors`` in ``directory``."""
        for name, e in self._items.items():
            state = {k: v.detach().contiguous().cpu() for k, v in e.module.state_dict().items()}
            save_file(state, str(directory / f"{name}.safetensors"))

    def load(self, directory: Path, vm: Any, configs: dict[str, dict[str, Any]]) -> None:
        """Re-create every extra ``configs`` lists with its registered builder and load its weights."""
        for name, config in configs.items():
            if name not in BUILDERS:
                raise ValueError(
                    f"checkpoint extra {name!r} has no registered builder; known: {sorted(BUILDERS)}"
                )
            path = directory / f"{name}.safetensors"
            if not path.is_file():
                raise FileNotFoundError(f"checkpoint lists extra {name!r} but {path} is missing")
            module = BUILDERS[name](vm, config)
            device = next(vm.model.parameters()).device
            module.load_state_dict(load_file(str(path), device=str(device)))
            self.add(name, module, config)
