"""Resumable training checkpoints, written atomically and read without unpickling.

A checkpoint directory ``step-N/`` holds:

- ``trainable.safetensors`` — every parameter that trains (LoRA or full weights, F_SR, routers)
- ``optimizer.safetensors`` + ``optimizer.json`` — the optimizer's tensors, and its param groups
- ``scheduler.json`` — the LR scheduler's state
- ``rng.safetensors`` + ``rng.json`` — torch (CPU and CUDA), NumPy and Python RNG states
- ``state.json`` — epoch, batch position within the epoch, optimizer step, curriculum stage
- ``config.yaml`` — the resolved training config
- ``model.yaml`` and the weights it names — the checkpoint as a model, for ``vedas.load``
  (:mod:`vedas.train.describe`); resume does not read them

It is written into a temporary sibling directory and renamed into place, so a run killed at
any moment leaves either the previous checkpoint or the new one, never half of one.
"""

from __future__ import annotations

import json
import random
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from safetensors.torch import load_file, save_file

from vedas.files import honour_umask
from vedas.files import latest_step as latest  # noqa: F401  (the recipe's name for it)
from vedas.train.fsdp import full


@dataclass
class TrainState:
    epoch: int = 0
    batch_in_epoch: int = 0  # batches of this epoch already consumed
    step: int = 0  # optimizer steps taken
    stage: int = 0


def _flatten_optimizer(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, Any] = {}
    for pid, st in sd["state"].items():
        for k, v in st.items():
            if isinstance(v, torch.Tensor):
                tensors[f"{pid}.{k}"] = full(v).detach().contiguous().cpu()
            else:
                scalars[f"{pid}.{k}"] = v
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for key, v in tensors.items():
        pid, name = key.split(".", 1)
        state.setdefault(int(pid), {})[name] = v
    for key, v in meta["scalars"].items():
        pid, name = key.split(".", 1)
        state.setdefault(int(pid), {})[name] = v
    return {"state": state, "param_groups": meta["param_groups"]}


def _rng_state() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda.{i}"] = s
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    py = random.getstate()
    meta = {
        "numpy": [kind, keys.tolist(), pos, has_gauss, cached],
        "python": [py[0], list(py[1]), py[2]],
    }
    return tensors, meta


def _set_rng_state(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    torch.set_rng_state(tensors["torch"])
    cuda = [tensors[k] for k in sorted(k for k in tensors if k.startswith("cuda."))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    kind, keys, pos, has_gauss, cached = meta["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    v, internal, gauss = meta["python"]
    random.setstate((v, tuple(internal), gauss))


def trainable_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: full(p).detach().contiguous().cpu() for n, p in module.named_parameters() if p.requires_grad}


def save(
    directory: Path,
    module: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    state: TrainState,
    config: dict[str, Any],
    write: bool = True,
    describe: Callable[[Path], None] | None = None,
) -> Path | None:
    """Write ``directory`` atomically (temp sibling, then rename). Sharded (FSDP) tensors are written
    whole: every rank calls this to gather them, and only the one with ``write`` writes (the others
    get None). ``describe(tmp)`` adds the files that let the checkpoint load as a model
    (:mod:`vedas.train.describe`) before the rename, so they are there exactly when the training
    state is."""
    weights = trainable_state(module)
    tensors, meta = _flatten_optimizer(optimizer)
    if not write:
        return None
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        save_file(weights, str(tmp / "trainable.safetensors"))
        save_file(tensors, str(tmp / "optimizer.safetensors"))
        (tmp / "optimizer.json").write_text(json.dumps(meta))
        (tmp / "scheduler.json").write_text(json.dumps(scheduler.state_dict()))
        rng_t, rng_m = _rng_state()
        save_file(rng_t, str(tmp / "rng.safetensors"))
        (tmp / "rng.json").write_text(json.dumps(rng_m))
        (tmp / "state.json").write_text(json.dumps(asdict(state)))
        (tmp / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        if describe is not None:
            describe(tmp)
        honour_umask(tmp)
        if directory.exists():
            shutil.rmtree(directory)
        tmp.rename(directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return directory


def load_weights(directory: Path, module: torch.nn.Module) -> None:
    """Copy ``trainable.safetensors`` of a checkpoint into ``module``'s parameters of the same names."""
    device = next(module.parameters()).device
    weights = load_file(str(directory / "trainable.safetensors"), device=str(device))
    params = dict(module.named_parameters())
    missing = [n for n in weights if n not in params]
    if missing:
        raise ValueError(f"{directory}: checkpoint has parameters this model lacks: {missing[:5]}")
    with torch.no_grad():
        for n, v in weights.items():
            params[n].copy_(v)


def load_optimizer(directory: Path, optimizer: Any, device: Any = "cpu") -> None:
    """Restore the optimizer's state (whole tensors, as written) from ``directory``."""
    device = torch.device(device)
    where = "cpu" if device.type == "cpu" else str(device)  # safetensors refuses "cpu:0"
    opt = _unflatten_optimizer(
        load_file(str(directory / "optimizer.safetensors"), device=where),
        json.loads((directory / "optimizer.json").read_text()),
    )
    optimizer.load_state_dict(opt)


def load(
    directory: Path, module: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any
) -> TrainState:
    """Restore weights, optimizer, scheduler and RNG states; returns the data position."""
    load_weights(directory, module)
    load_optimizer(directory, optimizer, next(module.parameters()).device)
    scheduler.load_state_dict(json.loads((directory / "scheduler.json").read_text()))
    _set_rng_state(
        load_file(str(directory / "rng.safetensors")), json.loads((directory / "rng.json").read_text())
    )
    return TrainState(**json.loads((directory / "state.json").read_text()))
