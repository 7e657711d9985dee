"""Gradient checkpointing of the decoder layers *with* the KV cache in the loop.

Training runs the inference passes through a ``DynamicCache`` (prefill, T_r latent chunks,
the teacher-forced text). transformers' gradient checkpointing drops the cache in training
(``past_key_values=None``) because the backward replay would append every key a second time,
so it cannot be used as is. Here each decoder layer is checkpointed by
:func:`checkpoint_with_cache`, whose replay gives the attention the keys it saw in the
forward pass instead of writing the cache again:

- forward: the layer runs normally (the cache grows); the cache length *before* the call is
  remembered;
- backward replay: the layer runs again with a read-only view of the cache whose ``update``
  returns ``cat(keys[:, :, :start], new_keys)``, the same values the forward saw. Gradients
  still flow along the forward graph (non-reentrant checkpointing only regenerates saved
  tensors), so earlier passes receive their share through the cache exactly as without
  checkpointing;
- the last-query recorder (:mod:`vedas.engine.attention`) computes its extra softmax row in the
  forward pass while a recorder is active; the replay activates a throw-away recorder in the
  same situations, so the same tensors are saved and regenerated.

Only activations inside a layer are recomputed; the layer inputs and the cache are kept.
Routing depth scaling's extra layer passes (which call ``layer.forward``) are checkpointed
the same way, without a cache. Of the vision tower, only the blocks that train (or feed a
block that trains) are checkpointed: a frozen tower runs once, without a graph.

    enable(vm.backbone)     # after freezing; active in train() mode only
"""

from __future__ import annotations

import functools
import logging
from typing import Any

import torch
from torch.utils.checkpoint import checkpoint

from vedas.engine import attention


class _FrozenCacheView:
    """What the replayed layer sees instead of the cache: the forward-time keys, read only."""

    def __init__(self, cache: Any, start: int) -> None:
        self.cache, self.start = cache, start

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *a: Any, **k: Any):
        layer = self.cache.layers[layer_idx]
        if self.start == 0:
            return key_states, value_states
        return (
            torch.cat([layer.keys[:, :, : self.start], key_states], dim=-2),
            torch.cat([layer.values[:, :, : self.start], value_states], dim=-2),
        )


def _cache_length(cache: Any, layer_idx: int) -> int:
    if cache is None or len(cache.layers) <= layer_idx or not cache.layers[layer_idx].is_initialized:
        return 0
    return int(cache.layers[layer_idx].keys.shape[-2])


def checkpoint_with_cache(fn: functools.partial, *args: Any) -> Any:
    """A decoder layer's ``forward`` (bound as a partial by transformers), checkpointed."""
    layer = fn.args[0]
    cache = fn.keywords.get("past_key_values")
    layer_idx = layer.self_attn.layer_idx
    start = _cache_length(cache, layer_idx)
    recording = attention._ACTIVE.get()  # the recorder of this forward call; the recompute records alike
    calls = [0]

    def run(*inputs: Any) -> Any:
        calls[0] += 1
        if calls[0] == 1:
            return fn(*inputs)
        kwargs = dict(fn.keywords)
        if cache is not None:
            kwargs["past_key_values"] = _FrozenCacheView(cache, start)
        token = attention._ACTIVE.set(None if recording is None else recording.fresh())
        try:
            return fn.func(*fn.args, *inputs, **kwargs)
        finally:
            attention._ACTIVE.reset(token)

    return checkpoint(run, *args, use_reentrant=False)


class _CacheKeptFilter(logging.Filter):
    """transformers warns that checkpointing sets ``use_cache=False``: our layers keep the cache (the
    decoder layer itself never reads ``use_cache``), so the warning would only mislead."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Caching is incompatible with gradient checkpointing")


_FILTER = _CacheKeptFilter()


def vision_blocks_to_checkpoint(visual: torch.nn.Module) -> list[torch.nn.Module]:
    """The vision blocks whose backward runs: every block from the first that holds a trainable
    parameter on (all of them when the patch embedding trains). None when the tower is frozen or
    only its merger trains: those blocks build no graph, so there is nothing to recompute (the
    merger, a small MLP, keeps its activations). None for a tower without transformer blocks
    (Chameleon's VQ-VAE builds no graph: its codes are an argmin)."""
    if not hasattr(visual, "blocks"):
        return []
    upstream = any(p.requires_grad for p in visual.patch_embed.parameters())
    chosen = []
    for block in visual.blocks:
        upstream = upstream or any(p.requires_grad for p in block.parameters())
        if upstream:
            chosen.append(block)
    return chosen


def enable(backbone: Any, vision: bool = True) -> int:
    """Checkpoint every decoder layer of ``backbone`` (an adapter) and, with ``vision``, the vision blocks
    that train (:func:`vision_blocks_to_checkpoint`, read from ``requires_grad`` now: freeze first).
    Returns the number of decoder layers. Active in train mode only.

    The vision blocks are switched here rather than by transformers' ``activation_checkpointing_enable``:
    the tower's ``main_input_name`` is ``input_ids``, so that also hooks the patch embedding to make its
    output require grad, and a frozen tower (LoRA) would be recomputed and back-propagated every step
    for nothing."""
    if vision:
        for block in vision_blocks_to_checkpoint(backbone.vision_tower()):
            block.gradient_checkpointing = True
            block._gradient_checkpointing_func = functools.partial(checkpoint, use_reentrant=False)
    layers = list(backbone.decoder_layers())
    for layer in layers:
        if not hasattr(layer, "_can_checkpoint_with_cache"):
            raise TypeError(f"{type(layer).__name__} is not a transformers GradientCheckpointingLayer")
        layer.gradient_checkpointing = True
        layer._can_checkpoint_with_cache = True  # our replay reads the cache, it never writes it again
        layer._gradient_checkpointing_func = checkpoint_with_cache
    logging.getLogger("transformers.modeling_layers").addFilter(_FILTER)
    return len(layers)


def disable(backbone: Any) -> None:
    for block in getattr(backbone.vision_tower(), "blocks", []):
        block.gradient_checkpointing = False
    for layer in backbone.decoder_layers():
        layer.gradient_checkpointing = False
