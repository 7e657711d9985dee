"""Replay policies: the plug-ins for the engine's token choice (:class:`vedas.engine.replay.ReplayPolicy`).

The paper's visual replay chooses by attention, the engine's default (no policy). The ablation's
controls pick K unvisited tokens uniformly at random; only the choice differs, the weights are
still softmax over the picked tokens' attention:

- ``replay_select: random`` in training: :class:`RandomReplay`, one generator for the run, so a
  sample gets fresh picks every epoch (an augmentation);
- ``replay_select: random_fixed`` in training, and both random forms at inference:
  :class:`SampleReplay`, one generator per sample seeded from ``replay_seed`` and the sample's key
  (its id, or a hash of its prompt and pixels), so its picks are the same every epoch and do not
  depend on which other samples share its batch.

:class:`PlaceholderReplay` is a probe, not a method: it keeps the attention's picks, weights and
positions but replays each sample's mean visual embedding in every slot, so the chunk layout stays
and only the replayed content is gone (``vedas analyze latent-use``'s ``replay_placeholder``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import torch

from vedas.config import LatentConfig
from vedas.engine.inputs import PromptBatch
from vedas.engine.replay import ReplayPolicy, VisualTokens, random_keys


class RandomReplay:
    """K random unvisited tokens per step, from one generator seeded with ``seed`` on the scores'
    device at the first step (training keeps one policy for the run: a fresh one per batch would
    give every batch the same picks)."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.generator: torch.Generator | None = None

    def keys(self, scores: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        if self.generator is None:
            self.generator = torch.Generator(device=scores.device).manual_seed(self.seed)
        return random_keys(scores.shape, self.generator)

    def content(self, visual: VisualTokens) -> None:
        return None


def sample_seed(seed: int, key: str) -> int:
    """A 63-bit generator seed from ``replay_seed`` and a sample's key (stable across runs and machines)."""
    digest = hashlib.sha256(f"{seed}\0{key}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


class SampleReplay:
    """K random unvisited tokens per step, each sample from its own CPU generator seeded by
    :func:`sample_seed` (``keys``: one per batch row). A row draws one uniform key per *valid*
    visual token per step, so neither the batch's padding width nor its other rows change the draw."""

    def __init__(self, seed: int, keys: Sequence[str]) -> None:
        self.seed = seed
        self.sample_keys = list(keys)
        self.generators = [torch.Generator().manual_seed(sample_seed(seed, k)) for k in self.sample_keys]

    def keys(self, scores: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        if len(self.generators) != scores.shape[0]:
            raise ValueError(f"sample keys: {len(self.generators)} given for a batch of {scores.shape[0]}")
        out = torch.zeros(scores.shape, dtype=torch.float32)
        host = valid.cpu()
        # a loop over rows, not one batched draw: one generator per row is what makes a row's
        # draw independent of the batch (the control's cost, not the method's)
        for row, (gen, mask) in enumerate(zip(self.generators, host)):
            out[row, mask] = torch.rand(int(mask.sum()), generator=gen)
        return out.to(scores.device)

    def content(self, visual: VisualTokens) -> None:
        return None


class PlaceholderReplay:
    """The attention's picks and weights with each sample's mean visual input embedding in every
    replayed slot: the chunk layout (K tokens, their positions) of replay on, without its content."""

    def keys(self, scores: torch.Tensor, valid: torch.Tensor) -> None:
        return None

    def content(self, visual: VisualTokens) -> torch.Tensor:
        mask = visual.valid[..., None].to(visual.features.dtype)
        mean = (visual.features * mask).sum(1, keepdim=True) / mask.sum(1, keepdim=True).clamp(min=1)
        return mean.expand_as(visual.features)


def prompt_keys(batch: PromptBatch, image_token_id: int) -> list[str]:
    """Each row's key when the caller names no sample ids: a hash of its unpadded prompt ids and its
    images' pixel values (the same sample gives the same key in any batch). Pixels are split by row
    where every visual token comes from the same number of pixel rows (the Qwen towers); elsewhere
    (Chameleon's per-image pixel tensors) the key is the prompt ids alone, so two samples with the
    same prompt share picks there unless the caller passes ids (``generate_records`` does)."""
    ids, attn = batch.input_ids.cpu(), batch.attention_mask.cpu()
    counts = ids.eq(image_token_id).sum(1).tolist()
    pixels = batch.pixel_values
    total = sum(counts)
    # every visual token comes from the same number of patch rows (the merger's factor)
    per_token = 0 if pixels is None or total == 0 or pixels.shape[0] % total else pixels.shape[0] // total
    flat = None if pixels is None else pixels.detach().float().cpu().contiguous()
    keys, start = [], 0
    for row, n in enumerate(counts):
        h = hashlib.sha256(ids[row][attn[row].bool()].numpy().tobytes())
        if flat is not None and n:
            h.update(flat[start : start + n * per_token].numpy().tobytes())
        start += n * per_token
        keys.append(h.hexdigest())
    return keys


def policy(cfg: LatentConfig, sample_keys: Sequence[str] | None = None) -> ReplayPolicy | None:
    """The replay policy ``cfg`` asks for (``replay_select``): None chooses by attention.

    With ``sample_keys`` (one per row: inference, or a ``random_fixed`` training batch) the random
    forms pick per sample (:class:`SampleReplay`); without, ``random`` draws from one generator
    (:class:`RandomReplay`, training's per-epoch resampling)."""
    if cfg.replay_select == "attention":
        return None
    if sample_keys is not None:
        return SampleReplay(cfg.replay_seed, sample_keys)
    if cfg.replay_select == "random_fixed":
        raise ValueError("replay_select: 'random_fixed' picks per sample and needs one key per sample")
    return RandomReplay(cfg.replay_seed)


__all__ = ["PlaceholderReplay", "RandomReplay", "SampleReplay", "policy", "prompt_keys", "sample_seed"]
