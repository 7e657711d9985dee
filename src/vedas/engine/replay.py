"""Visual replay (docs/design.md#visual-replay): pick the most-attended unvisited visual tokens and weight them.

At latent step t the last query's attention a^(t) over each sample's visual tokens picks
I^(t) = top-K among tokens not replayed before (the visited set grows every step, per
sample). The replayed block is B^(t) = Diag(softmax(a^(t)_I)) · V_I, with V the visual input
embeddings (after the merger). Everything is batched over a padded (B, N_max) layout; no
Python loop over samples; one host sync per step for the chunk width.

A control (``replay_select: random``, :func:`random_keys`) picks K unvisited tokens uniformly at
random instead of by attention; the block's weights are still softmax(a_I) over the picked ones,
so only the choice differs from the method.

Selected tokens are emitted in their original (raster) order, invalid slots first, so a
chunk is ``[pads…, replayed tokens…, z]`` and left padding stays on the left.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch


@dataclass
class VisualTokens:
    """Each sample's visual tokens in a padded layout (N_max = the most any sample has)."""

    seq_index: torch.Tensor  # (B, N) position of each visual token in the prompt sequence (0 where invalid)
    valid: torch.Tensor  # (B, N) bool
    features: torch.Tensor  # (B, N, D) visual input embeddings
    positions: torch.Tensor  # (3, B, N) their (t, h, w) rope positions in the prompt
    image: torch.Tensor | None = None  # (B, N) index of the token's image in the batch's image list
    row: torch.Tensor | None = None  # (B, N) row on that image's merged grid
    col: torch.Tensor | None = None  # (B, N) column on that image's merged grid
    side: torch.Tensor | None = None
    """(S, B, N, D) per-layer rows the decoder adds at each token's position (Qwen3-VL's DeepStack), or None."""

    @property
    def count(self) -> torch.Tensor:
        return self.valid.sum(1)


@dataclass
class Replay:
    """One step's selection: indices into each sample's visual tokens and the replay block."""

    index: torch.Tensor  # (B, k) visual-token indices; arbitrary where ~mask
    mask: torch.Tensor  # (B, k) bool, invalid slots first
    weights: torch.Tensor  # (B, k) softmax(a_I) × scale, 0 where ~mask
    tokens: torch.Tensor  # (B, k, D) for topk or (B, 1, D) for soft_mix
    token_mask: torch.Tensor  # (B, k) or (B, 1) bool


def select(
    scores: torch.Tensor, valid: torch.Tensor, visited: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k of ``scores`` among valid, unvisited tokens, per sample (k clipped to what is left).

    Returns ``(index, mask)`` of shape (B, k_max), sorted so invalid slots come first and the
    selected tokens follow in ascending index order.
    """
    free = valid & ~visited
    left = free.sum(1)
    k_max = int(torch.clamp(left, max=k).max()) if scores.shape[1] else 0
    b = scores.shape[0]
    if k_max == 0:
        empty = torch.zeros(b, 0, dtype=torch.long, device=scores.device)
        return empty, empty.bool()
    masked = scores.float().masked_fill(~free, float("-inf"))
    _, top = masked.topk(k_max, dim=1)
    mask = torch.arange(k_max, device=scores.device)[None] < torch.clamp(left, max=k)[:, None]
    key = torch.where(mask, top, torch.full_like(top, -1))
    key, order = key.sort(dim=1)
    index = torch.where(key >= 0, key, torch.zeros_like(key))
    return index, mask.gather(1, order)


SELECTIONS = ("attention", "random", "random_fixed")
"""How a step chooses its tokens (``LatentConfig.replay_select``)."""


@dataclass
class Step:
    """What a policy may read at one latent step beyond the layer-mean scores and ``valid``."""

    visual: VisualTokens
    visited: torch.Tensor  # (B, N) bool: tokens replayed at earlier steps (not free to pick)
    k: int  # the step's K (before clipping to the free tokens)
    rows: torch.Tensor | None = None
    """(B, layers, N) each layer's head-mean attention over the visual tokens, or (B, layers, H, N)
    per head, when the policy asked for them (:attr:`ReplayPolicy.record`); else None."""

    @property
    def free(self) -> torch.Tensor:
        return self.visual.valid & ~self.visited


class ReplayPolicy(Protocol):
    """The extension point of token choice: the loop asks it for keys each latent step.

    The method's own choice (by attention) is no policy at all (``None``); a control that chooses
    otherwise (:class:`vedas.method.replay.RandomReplay`) returns keys whose top-K among the free
    tokens is its pick. The weights stay softmax over the attention of the picked tokens. A probe may
    also replace what is replayed (:meth:`content`) while the choice, weights and positions stay.
    A saliency option (:class:`vedas.method.replay.SaliencyReplay`) reads :class:`Step`: each layer's
    (or head's) attention, which it asks the runner to keep through :attr:`record`.
    """

    record: str | None
    """What the runner keeps beside the mean for this policy: None, ``"layers"`` or ``"heads"``."""

    def keys(
        self, scores: torch.Tensor, valid: torch.Tensor, step: Step | None = None
    ) -> torch.Tensor | None:
        """Keys (B, N) that choose this step's tokens instead of ``scores`` (B, N), or None;
        ``valid`` (B, N) marks each sample's real visual tokens; ``step`` the rest of the step's state
        (the loop always passes it)."""
        ...

    def content(self, visual: VisualTokens) -> torch.Tensor | None:
        """Features (B, N, D) replayed in place of ``visual.features`` (a probe's placeholder), or None."""
        ...


def random_keys(shape: torch.Size | tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    """Uniform keys (B, N) on the generator's device: their top-K among the free tokens is a
    uniformly random K-subset of them (``replay_select: random``)."""
    return torch.rand(shape, generator=generator, device=generator.device)


def build(
    scores: torch.Tensor,
    visual: VisualTokens,
    visited: torch.Tensor,
    k: int,
    mode: str = "topk",
    scale: str = "paper",
    keys: torch.Tensor | None = None,
    features: torch.Tensor | None = None,
) -> Replay:
    """Select I^(t) and build B^(t) for a batch; ``visited`` is updated in place by the caller.

    ``keys`` (B, N), when given, choose the tokens instead of ``scores`` (:func:`random_keys`);
    the weights are still softmax over ``scores`` of the chosen tokens. ``features`` (B, N, D), when
    given, are replayed instead of ``visual.features`` (same picks, weights and positions).
    """
    index, mask = select(scores if keys is None else keys, visual.valid, visited, k)
    a = scores.float().gather(1, index).masked_fill(~mask, float("-inf"))
    w = torch.nan_to_num(a.softmax(1), nan=0.0) * mask  # a sample with nothing selected gets all zeros
    if scale == "unit":
        w = w * mask.sum(1, keepdim=True)
    source = visual.features if features is None else features
    feats = source.gather(1, index[..., None].expand(-1, -1, source.shape[-1]))
    weighted = feats * w[..., None].to(feats.dtype)
    if mode == "soft_mix":
        tokens = weighted.sum(1, keepdim=True)
        token_mask = mask.any(1, keepdim=True)
    else:
        tokens, token_mask = weighted, mask
    return Replay(index=index, mask=mask, weights=w, tokens=tokens, token_mask=token_mask)


def mark_visited(visited: torch.Tensor, replay: Replay) -> torch.Tensor:
    """The visited set after this step (a new tensor)."""
    if replay.index.shape[1] == 0:
        return visited
    # scatter_add, not scatter: invalid slots point at index 0 and must not overwrite a hit there
    hit = torch.zeros(visited.shape, dtype=torch.long, device=visited.device)
    hit.scatter_add_(1, replay.index, replay.mask.long())
    return visited | (hit > 0)
