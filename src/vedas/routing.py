"""Routing Depth Scaling (SPEC §2.3): where the engine tells routed layers what to route.

RDS acts only in the implicit phase (the prefill and the latent chunk passes). The engine
marks each pass's query tokens with a *segment id*: tokens of one segment compete for the
top-α slots and attend to each other in the refinement passes; ``-1`` marks tokens that are
never routed (padding, and every token of the explicit phase). The cached engine has one
segment per pass; the recompute oracle runs the whole sequence at once with one segment per
original pass, so both see the same routing.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

import torch

_SEGMENTS: contextvars.ContextVar[torch.Tensor | None] = contextvars.ContextVar("vedas_segments", default=None)
_ALLOWED: contextvars.ContextVar[bool] = contextvars.ContextVar("vedas_routing_allowed", default=True)


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
