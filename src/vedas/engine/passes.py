"""The pass context: what every runner shares about one decoder pass, and the extension point of the
hooks that act inside it (routing depth scaling, :mod:`vedas.method.routing`).

- :func:`decoder_pass`: the one decoder call both cache-keeping engines make (the static engine
  compiles it);
- :func:`segment_ids` and :func:`segments`: each new token's routing segment (its latent step, -1
  where nothing may be routed), set around a pass by the runner, read by a layer hook
  (:func:`current_segments`);
- :func:`allowed`: a switch the caller sets around work that must run unrouted (mode ``latent``,
  ablations);
- :data:`LAYER_HOOKS`: decoder layer -> the hook module on it; an enabled one makes the static engine
  run uncompiled (:func:`hooked`).

The engine owns these so that it never imports :mod:`vedas.method`: a method plugs in here.
"""

from __future__ import annotations

import contextlib
import contextvars
import weakref
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

_SEGMENTS: contextvars.ContextVar[torch.Tensor | None] = contextvars.ContextVar(
    "vedas_segments", default=None
)
_ALLOWED: contextvars.ContextVar[bool] = contextvars.ContextVar("vedas_routing_allowed", default=True)

LAYER_HOOKS: weakref.WeakKeyDictionary[nn.Module, Any] = weakref.WeakKeyDictionary()
"""Decoder layer -> the module whose forward hook acts on it (at most one; it has ``.enabled``)."""


@contextlib.contextmanager
def allowed(on: bool) -> Iterator[None]:
    """Switch routing on or off for the enclosed work (mode ``latent`` and ablations run without it)."""
    token = _ALLOWED.set(on)
    try:
        yield
    finally:
        _ALLOWED.reset(token)


def is_allowed() -> bool:
    return _ALLOWED.get()


@contextlib.contextmanager
def segments(ids: torch.Tensor | None) -> Iterator[None]:
    """Route the queries of the enclosed forward by ``ids`` (B, L_query); None turns routing off."""
    token = _SEGMENTS.set(ids)
    try:
        yield
    finally:
        _SEGMENTS.reset(token)


def current_segments() -> torch.Tensor | None:
    return _SEGMENTS.get()


def hooked(layer: nn.Module) -> bool:
    """Whether an enabled hook module acts on ``layer`` (the static engine then does not compile)."""
    module = LAYER_HOOKS.get(layer)
    return module is not None and module.enabled


def segment_ids(new_mask: torch.Tensor, implicit: bool, index: int) -> torch.Tensor:
    """Routing segment ids of one pass's tokens: ``index`` where routable, -1 for padding or explicit text."""
    if not implicit:
        return torch.full(new_mask.shape, -1, dtype=torch.long, device=new_mask.device)
    return torch.where(new_mask.bool(), index, -1)


def decoder_pass(
    decoder: Any,
    embeds: torch.Tensor,
    mask: torch.Tensor,
    positions: torch.Tensor,
    cache: Any,
    **extra: Any,
) -> torch.Tensor:
    """One decoder forward over new tokens with a KV cache: the final-norm hidden states (B, n, D).

    The one call both cache-keeping engines make (the static engine compiles it); ``extra`` is
    what :meth:`Backbone.decoder_inputs` adds for the pass (Qwen3-VL's DeepStack rows).
    """
    return decoder(
        inputs_embeds=embeds,
        attention_mask=mask,
        position_ids=positions,
        past_key_values=cache,
        use_cache=True,
        **extra,
    ).last_hidden_state
