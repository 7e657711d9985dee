"""What a ``step-N`` training checkpoint needs to load as a model, written beside its training state,
so that ``vedas.load`` of it reads only these files (:func:`vedas.model.load`), never the recipe or
the training data.

- ``model.yaml`` — ``arch``, ``base`` (None, or the base model the run started from, as an absolute
  path or a hub id), ``dtype`` (the base's, as training loaded it), ``latent``, ``extras``, ``trained``
- a run on a named base: ``delta.safetensors`` — the weights training changed, with LoRA merged in,
  under the base model's names (the frozen rest comes from the base)
- a run on the tiny model (its weights and BPE come from the seed and the data): ``model/``, the whole
  model and its processor files, as ``final/`` has them
- ``<name>.safetensors`` for each extra (routers, GAP modules), as in a vedas checkpoint

A checkpoint saved before these files existed gets them with ``python -m vedas.train.upgrade DIR``
(rebuilt once by the recipe, :func:`vedas.train.recipe.load_step`; see docs/design.md#checkpoints).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors.torch import save_file

from vedas.checkpoint import DELTA_FILE, STEP_MODEL_FILE, WEIGHTS_DIR


def _meta(
    vm: Any, base: str | None, dtype: str, trained: dict[str, Any] | None, latent: Any = None
) -> dict[str, Any]:
    from vedas.config import to_dict

    return {
        "arch": vm.model.config.model_type,
        "base": base,
        "dtype": dtype,
        "latent": to_dict(latent or vm.config),
        "extras": vm.extras.configs(),
        "trained": trained,
    }


def changed_weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The weights training changes in ``model``, as the merged model names them: each LoRA-wrapped
    layer's weight with its adapters' deltas added (the sum peft's ``merge`` computes, in its order),
    and every other parameter that trains."""
    out: dict[str, torch.Tensor] = {}
    wrapped = {n: m for n, m in model.named_modules() if hasattr(m, "get_delta_weight")}
    for name, module in wrapped.items():
        weight = module.get_base_layer().weight.detach()
        for adapter in module.active_adapters:
            weight = weight + module.get_delta_weight(adapter)
        out[f"{name}.weight"] = weight
    for name, p in model.named_parameters():
        if p.requires_grad and ".lora_" not in name:
            out[name] = p.detach()
    return {n: t.contiguous().cpu().clone() for n, t in out.items()}  # clone: tied weights save apart


def write_delta(
    directory: Path, vm: Any, base: str, dtype: str, latent: Any, trained: dict[str, Any] | None
) -> None:
    """Describe a run on the named ``base``: the changed weights, the extras and ``model.yaml``
    (``latent``: the run's LatentConfig, what its ``final/`` would record)."""
    save_file(changed_weights(vm.model), str(directory / DELTA_FILE))
    vm.extras.save(directory)
    meta = _meta(vm, base, dtype, trained, latent)
    (directory / STEP_MODEL_FILE).write_text(yaml.safe_dump(meta, sort_keys=False))


def write_whole(directory: Path, vm: Any, trained: dict[str, Any] | None) -> None:
    """Describe a model with no base to point to (the tiny one): ``vm`` (LoRA merged) whole in ``model/``."""
    from vedas.model import _no_deepspeed_probe

    with _no_deepspeed_probe():
        vm.model.save_pretrained(directory / WEIGHTS_DIR, safe_serialization=True)
    vm.processor.save_pretrained(directory / WEIGHTS_DIR)
    vm.extras.save(directory)
    meta = _meta(vm, None, str(vm.model.dtype).removeprefix("torch."), trained)
    (directory / STEP_MODEL_FILE).write_text(yaml.safe_dump(meta, sort_keys=False))


def base_pointer(base: str) -> str:
    """Where ``vedas.load`` finds the run's ``model.base`` later: a local path made absolute (the run may
    have started elsewhere), a hub id as it is."""
    from vedas.checkpoint import looks_local

    path = Path(base).expanduser()
    return str(path.resolve()) if path.exists() or looks_local(base) else base
