"""FSDP2 training through accelerate (``run.fsdp``): decoder layers as FSDP units, full state dicts.

The settings file (``configs/fsdp/*.yaml``) is small on purpose; what it does not name is decided
here, for the latent loop:

- the backbone's decoder layers are FSDP units (accelerate's ``transformer_based_wrap`` on their
  class); everything else (embeddings, ``lm_head``, the vision tower, F_SR, routers, GAP modules)
  is in the root unit, the :class:`~vedas.train.objective.LatentObjective`. The loop calls
  ``embed`` and ``lm_head`` outside the HF model's ``forward`` but inside the objective's, where the
  root's parameters are gathered;
- ``reshard_after_forward`` is the file's: each decoder layer runs 2 + T_r times a step;
- checkpoints hold full (gathered) tensors in the same safetensors files as a DDP run, so a run can
  resume on another number of processes, and every rank takes part in the gathering.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from typing import Any

import torch

from vedas.config import ConfigError, load_yaml


@dataclass
class FSDPSettings:
    """A ``configs/fsdp/*.yaml`` file."""

    reshard_after_forward: bool = False
    """Free each decoder layer's gathered weights after every forward (True) or keep them until its
    backward (False: one all-gather per layer per step instead of one per latent pass)."""


def load_settings(path: str) -> FSDPSettings:
    """The settings in ``path``; an unknown key or a non-boolean value fails, naming the file and key."""
    if not os.path.isfile(path):
        raise ConfigError(f"run.fsdp: no such file {path!r}")
    data = load_yaml(path)
    known = {f.name for f in fields(FSDPSettings)}
    for key, value in data.items():
        if key not in known:
            raise ConfigError(f"run.fsdp: {path}: unknown key {key!r} (known: {sorted(known)})")
        if not isinstance(value, bool):
            raise ConfigError(f"run.fsdp: {path}: {key} must be true or false, got {value!r}")
    return FSDPSettings(**data)


def plugin(path: str) -> Any:
    """accelerate's FSDP2 plugin for the settings in ``path``; on CPU the process group is gloo."""
    from accelerate import FullyShardedDataParallelPlugin

    settings = load_settings(path)
    return FullyShardedDataParallelPlugin(
        fsdp_version=2,
        reshard_after_forward=settings.reshard_after_forward,
        auto_wrap_policy="transformer_based_wrap",
        state_dict_type="FULL_STATE_DICT",
    )


def on_cpu(acc: Any, fsdp_plugin: Any) -> None:
    """Run accelerate's FSDP2 path over gloo on CPU. accelerate chooses FSDP only for accelerator
    devices and leaves a CPU run under torchrun as plain ``MULTI_CPU``, but its FSDP2 preparation
    (``fully_shard``) and torch's all-gather/reduce-scatter work on gloo: the tests run it so."""
    from accelerate import DistributedType

    acc.state.distributed_type = DistributedType.FSDP
    acc.state.fsdp_plugin = fsdp_plugin


def wrap_decoder_layers(acc: Any, vm: Any) -> None:
    """Name the backbone's decoder-layer class as accelerate's FSDP unit (before ``acc.prepare``)."""
    layers = vm.backbone.decoder_layers()
    acc.state.fsdp_plugin.transformer_cls_names_to_wrap = [type(layers[0]).__name__]


def keep_through_backward(model: torch.nn.Module) -> None:
    """Keep each unit's gathered weights until :func:`reshard` rather than freeing them after its
    backward. The latent loop runs a decoder layer once per pass, and its keys and values of pass t
    stay in the KV cache that later passes attend to: the backward of pass t's call reaches the
    layer's weights again after another call's backward has finished (and, by default, resharded
    them): "setStorage: ... out of bounds for storage of size 0"."""
    from torch.distributed.fsdp import FSDPModule

    for m in model.modules():
        if isinstance(m, FSDPModule):
            m.set_reshard_after_backward(False)


def reshard(model: torch.nn.Module) -> None:
    """Free the gathered weights after a backward (:func:`keep_through_backward`): the next forward
    gathers the updated shards again."""
    from torch.distributed.fsdp import FSDPModule

    for m in model.modules():
        if isinstance(m, FSDPModule):
            m.reshard()


def full(t: torch.Tensor) -> torch.Tensor:
    """``t`` whole: a sharded DTensor is gathered (a collective: every rank must call it)."""
    from torch.distributed.tensor import DTensor

    return t.full_tensor() if isinstance(t, DTensor) else t


def shard_optimizer_state(optimizer: torch.optim.Optimizer) -> None:
    """After a full optimizer state was loaded into a sharded model's optimizer: each state tensor
    shaped like its (DTensor) parameter is sharded as the parameter is. Every rank read the same file,
    so each keeps its own shard of the same tensor."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    for group in optimizer.param_groups:
        for p in group["params"]:
            st = optimizer.state.get(p, {})
            if not isinstance(p, DTensor):
                continue
            for k, v in st.items():
                # "step" is a scalar; exp_avg and exp_avg_sq have the parameter's shape
                if isinstance(v, torch.Tensor) and not isinstance(v, DTensor) and v.shape == p.shape:
                    # src_data_rank=None: each rank cuts its own shard, no communication
                    st[k] = distribute_tensor(v.to(p.device), p.device_mesh, p.placements, src_data_rank=None)


def gather_in_place(module: torch.nn.Module, keep: bool) -> None:
    """After the last step: every sharded parameter of ``module`` replaced by its whole tensor where
    ``keep`` (the process that exports; on its device, beside the buffers); elsewhere by an empty
    tensor, so N ranks do not each hold a whole copy. Every rank must call it (each gathering is a
    collective)."""
    from torch.distributed.tensor import DTensor

    for sub in module.modules():
        for name, p in list(sub.named_parameters(recurse=False)):
            if isinstance(p, DTensor):
                whole = p.full_tensor().detach()  # on every rank: the all-gather is collective
                if not keep:  # one parameter at a time: a rank holds one whole tensor at most
                    whole = torch.empty(0, dtype=p.dtype, device=p.device)
                sub._parameters[name] = torch.nn.Parameter(whole, requires_grad=p.requires_grad)
