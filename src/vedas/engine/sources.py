"""Which positions of a decoder pass are visual tokens, and which prompt visual tokens they are made of.

The engine feeds the decoder embeddings only; an architecture that also injects per-layer
visual inputs at the image positions (Qwen3-VL's DeepStack) needs to know, for every pass,
where the visual tokens sit and whose rows they carry. :class:`VisualSources` says it in one
general form: position j of row b is the weighted sum over ``m`` source tokens
``index[b, j, :]`` (indices into the prompt's :class:`~vedas.engine.replay.VisualTokens`),
with ``weight`` and ``mask`` of the same shape (no source where ``mask`` is all False).

- the prompt's image tokens: one source each, weight 1 (:meth:`VisualSources.prompt`);
- a top-K replay block: one source each, the replay weight (:meth:`VisualSources.replay`);
- a soft-mix replay token: all K sources, the replay weights;
- text, latents, padding: none.

The backbone turns it into decoder keyword arguments
(:meth:`vedas.backbones.base.Backbone.decoder_inputs`); the runners pass them with each pass,
the recompute runner over the concatenated prefix (docs/design.md#deepstack-replay).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from vedas.engine.replay import Replay, VisualTokens


@dataclass
class VisualSources:
    """Per position of a pass: the visual tokens it is made of (see the module docstring)."""

    index: torch.Tensor  # (B, n, m) long, indices into visual's tokens; arbitrary where ~mask
    weight: torch.Tensor  # (B, n, m) float
    mask: torch.Tensor  # (B, n, m) bool
    visual: VisualTokens | None = None
    """The prompt's visual tokens the indices point into (None only for a pass with no source)."""

    @property
    def is_visual(self) -> torch.Tensor:
        """(B, n) bool: the positions made of at least one visual token."""
        return self.mask.any(-1)

    @classmethod
    def none(cls, batch: int, length: int, device: torch.device) -> VisualSources:
        """A pass with no visual position (text, latents, decoded tokens)."""
        index = torch.zeros(batch, length, 0, dtype=torch.long, device=device)
        return cls(index, index.float(), index.bool())

    @classmethod
    def prompt(cls, visual: VisualTokens, length: int) -> VisualSources:
        """The prompt pass: each image position is its own visual token, weight 1."""
        b, n = visual.valid.shape
        dev = visual.valid.device
        own = torch.arange(n, device=dev)[None].expand(b, -1)
        # scatter_add: invalid slots point at position 0 and must not overwrite a real token there
        index = torch.zeros(b, length, dtype=torch.long, device=dev)
        index.scatter_add_(1, visual.seq_index, torch.where(visual.valid, own, 0))
        hit = torch.zeros(b, length, dtype=torch.long, device=dev)
        hit.scatter_add_(1, visual.seq_index, visual.valid.long())
        mask = hit > 0
        return cls(index[..., None], mask[..., None].float(), mask[..., None], visual)

    @classmethod
    def replay(cls, rep: Replay, visual: VisualTokens, trailing: int = 1) -> VisualSources:
        """A chunk ``[B^t…, z]``: the replay block's sources, then ``trailing`` positions with none."""
        if rep.tokens.shape[1] == rep.index.shape[1]:  # top-K: one source per replayed token
            index, weight, mask = rep.index[..., None], rep.weights[..., None], rep.mask[..., None]
        else:  # soft mix: one token made of all K
            index, weight, mask = rep.index[:, None], rep.weights[:, None], rep.mask[:, None]
        tail = cls.none(index.shape[0], trailing, index.device)
        return cls(index, weight.float(), mask, visual).cat(tail)

    def cat(self, other: VisualSources) -> VisualSources:
        """This pass followed by ``other`` along the sequence (source widths padded to the larger)."""
        m = max(self.index.shape[2], other.index.shape[2])

        def pad(x: torch.Tensor) -> torch.Tensor:
            return F.pad(x, (0, m - x.shape[2]))

        return VisualSources(
            index=torch.cat([pad(self.index), pad(other.index)], 1),
            weight=torch.cat([pad(self.weight), pad(other.weight)], 1),
            mask=torch.cat([pad(self.mask), pad(other.mask)], 1),
            visual=self.visual if self.visual is not None else other.visual,
        )

    def truncate(self, length: int) -> VisualSources:
        """The first ``length`` positions."""
        return VisualSources(
            self.index[:, :length], self.weight[:, :length], self.mask[:, :length], self.visual
        )

    def mix(self, rows: torch.Tensor) -> torch.Tensor:
        """Per-token rows (S, B, N, E) of the visual tokens -> each position's weighted mix (S, B, n, E)."""
        b, n, m = self.index.shape
        batch = torch.arange(b, device=rows.device)[:, None, None].expand(b, n, m)
        picked = rows[:, batch, self.index]  # (S, B, n, m, E)
        w = (self.weight * self.mask).to(rows.dtype)
        return (picked * w[None, ..., None]).sum(3)
