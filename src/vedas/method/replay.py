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
import math
from collections.abc import Sequence

import torch

from vedas.config import LatentConfig
from vedas.engine import replay as engine_replay
from vedas.engine.inputs import PromptBatch
from vedas.engine.replay import ReplayPolicy, Step, VisualTokens, random_keys


class RandomReplay:
    """K random unvisited tokens per step, from one generator seeded with ``seed`` on the scores'
    device at the first step (training keeps one policy for the run: a fresh one per batch would
    give every batch the same picks)."""

    record = None

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.generator: torch.Generator | None = None

    def keys(self, scores: torch.Tensor, valid: torch.Tensor, step: Step | None = None) -> torch.Tensor:
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

    record = None

    def __init__(self, seed: int, keys: Sequence[str]) -> None:
        self.seed = seed
        self.sample_keys = list(keys)
        self.generators = [torch.Generator().manual_seed(sample_seed(seed, k)) for k in self.sample_keys]

    def keys(self, scores: torch.Tensor, valid: torch.Tensor, step: Step | None = None) -> torch.Tensor:
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

    record = None

    def keys(self, scores: torch.Tensor, valid: torch.Tensor, step: Step | None = None) -> None:
        return None

    def content(self, visual: VisualTokens) -> torch.Tensor:
        mask = visual.valid[..., None].to(visual.features.dtype)
        mean = (visual.features * mask).sum(1, keepdim=True) / mask.sum(1, keepdim=True).clamp(min=1)
        return mean.expand_as(visual.features)


DEBIAS_SWEEPS = 4
"""Back-fitting sweeps of the row + column fit: one is exact on a full grid (every image's cells
valid); the others settle a ragged layout."""
DUPLICATE_COSINE = 1 - 1e-5
"""Cosine similarity from which two visual embeddings count as the same token (the diversity term)."""


def layer_saliency(
    rows: torch.Tensor, layers: Sequence[int] | None, heads: Sequence[int] | None
) -> torch.Tensor:
    """The mean of the chosen layers' (and heads') attention: (B, N) from ``rows`` (B, layers, N) or
    (B, layers, H, N). None chooses every layer (head). Heads are averaged first, the recorder's
    way, so per-head rows give bit for bit the map of per-layer rows when ``heads`` is None."""
    if rows.dim() == 4:
        if heads is not None:
            bad = [i for i in heads if i >= rows.shape[2]]
            if bad:
                raise ValueError(f"replay_heads: {bad} out of range for {rows.shape[2]} query heads")
            rows = rows[:, :, list(heads)]
        rows = rows.mean(2)
    elif heads is not None:
        raise ValueError("replay_heads: the runner kept head-mean rows only (keep='heads' records heads)")
    if layers is not None:
        bad = [i for i in layers if i >= rows.shape[1]]
        if bad:
            raise ValueError(f"replay_layers: {bad} out of range for a decoder of {rows.shape[1]} layers")
        rows = rows[:, list(layers)]
    return rows.mean(1)


def debias_rowcol(scores: torch.Tensor, visual: VisualTokens, sweeps: int = DEBIAS_SWEEPS) -> torch.Tensor:
    """``scores`` (B, N) minus their least-squares fit by image-row and image-column effects over each
    sample's valid tokens (back-fitting: subtract the row means, then the column means, repeated);
    0 at invalid slots. A score that depends on row and column only comes out 0 everywhere."""
    if visual.row is None or visual.col is None or visual.image is None:
        raise ValueError(
            "replay_debias: 'rowcol' needs each visual token's image row and column; none are known here"
        )
    w = visual.valid.float()
    r = scores.detach().float() * w
    rows_n, cols_n = int(visual.row.max()) + 1, int(visual.col.max()) + 1
    groups = [visual.image * rows_n + visual.row, visual.image * cols_n + visual.col]
    for _ in range(sweeps):
        for gid in groups:
            size = int(gid.max()) + 1
            total = r.new_zeros(r.shape[0], size).scatter_add_(1, gid, r)
            count = r.new_zeros(r.shape[0], size).scatter_add_(1, gid, w)
            r = (r - (total / count.clamp(min=1)).gather(1, gid)) * w
    return r


def diverse_keys(
    scores: torch.Tensor, features: torch.Tensor, free: torch.Tensor, k: int, weight: float
) -> torch.Tensor:
    """Keys (B, N) whose top-``k`` among ``free`` is a greedy, DivPrune-like choice: each next pick
    maximises (1 − weight)·s + weight·(1 − max cosine to the earlier picks), s the score min-max
    scaled to [0, 1] over the free tokens; a token whose embedding equals an earlier pick's
    (cosine ≥ :data:`DUPLICATE_COSINE`) comes after every other. Picks get keys k, k − 1, …; the rest 0."""
    b, n = scores.shape
    unit = torch.nn.functional.normalize(features.detach().float(), dim=-1)
    s = scores.detach().float()
    lo = s.masked_fill(~free, float("inf")).min(1, keepdim=True).values
    hi = s.masked_fill(~free, float("-inf")).max(1, keepdim=True).values
    scaled = torch.nan_to_num((s - lo) / (hi - lo).clamp(min=1e-30), nan=0.0)
    nearest = torch.full((b, n), -1.0, device=s.device)  # no earlier pick: the same term for every token
    keys = torch.zeros(b, n, device=s.device)
    taken = torch.zeros_like(free)
    for i in range(k):
        gain = (1 - weight) * scaled + weight * (1 - nearest)
        gain = gain - 4.0 * (nearest >= DUPLICATE_COSINE)  # gain lies in [0, 2]: 4 ranks duplicates last
        gain = gain.masked_fill(~free | taken, float("-inf"))
        best, j = gain.max(1)
        ok = torch.isfinite(best)  # False: the row has nothing left to pick (j is arbitrary there)
        taken = taken | (torch.nn.functional.one_hot(j, n).bool() & ok[:, None])
        keep = keys.gather(1, j[:, None])
        keys = keys.scatter(1, j[:, None], torch.where(ok[:, None], float(k - i), keep))
        # one pick's similarity per step, not an N × N matrix: N reaches thousands of tokens
        pick = unit.gather(1, j[:, None, None].expand(b, 1, unit.shape[-1]))  # (B, 1, D)
        nearest = torch.maximum(nearest, (unit @ pick.transpose(1, 2))[..., 0])
    return keys


class SaliencyReplay:
    """The paper's attention choice with the saliency options of :class:`~vedas.config.LatentConfig`:
    the attention of chosen layers/heads (``replay_layers``, ``replay_heads``), residualised on image
    row and column (``replay_debias``), a greedy diversity term (``replay_diversity``) and an ε share
    of random picks (``replay_random_share``, drawn by ``random``: a :class:`SampleReplay` or
    :class:`RandomReplay`). Only the choice changes: the block weights stay softmax over the
    all-layer mean of the picked tokens, and the positions those of the picks."""

    def __init__(self, cfg: LatentConfig, random: RandomReplay | SampleReplay | None = None) -> None:
        self.layers, self.heads = cfg.replay_layers, cfg.replay_heads
        self.debias = cfg.replay_debias
        self.share, self.diversity = float(cfg.replay_random_share), float(cfg.replay_diversity)
        self.random = random
        if self.share > 0 and random is None:
            raise ValueError("replay_random_share: the ε picks need a random source (policy() builds one)")
        self.record = "heads" if self.heads is not None else "layers" if self.layers is not None else None

    def saliency(self, scores: torch.Tensor, step: Step) -> torch.Tensor:
        """The map (B, N) the picks are ranked by: the chosen layers'/heads' attention (else ``scores``,
        the all-layer mean), debiased when asked; before the diversity term and the ε share."""
        if self.record is not None:
            if step.rows is None:
                raise RuntimeError("replay_layers/replay_heads: the runner kept no per-layer attention")
            scores = layer_saliency(step.rows, self.layers, self.heads)
        scores = scores.detach().float()
        return debias_rowcol(scores, step.visual) if self.debias == "rowcol" else scores

    def random_count(self, k: int) -> int:
        """How many of ``k`` picks the ε share draws at random (ε·k rounded half up)."""
        return math.floor(self.share * k + 0.5)

    def keys(self, scores: torch.Tensor, valid: torch.Tensor, step: Step | None = None) -> torch.Tensor:
        if step is None:
            raise ValueError("SaliencyReplay.keys needs the step's state (the latent loop passes it)")
        ranked = self.saliency(scores, step)
        free = step.free
        chosen = self.random_count(step.k)
        main = step.k - chosen
        keys = ranked
        if self.diversity > 0:
            keys = diverse_keys(ranked, step.visual.features, free, main, self.diversity)
        if chosen == 0:
            return keys
        assert self.random is not None
        # the saliency's picks outrank every uniform key in [0, 1): the ε share is uniform among the rest
        index, mask = engine_replay.select(keys, valid, step.visited, main)
        uniform = self.random.keys(scores, valid).to(keys.device).float()
        lift = torch.zeros_like(uniform).scatter_add_(1, index, 2.0 * mask.float())
        return uniform + lift

    def content(self, visual: VisualTokens) -> None:
        return None


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


def needs_sample_keys(cfg: LatentConfig) -> bool:
    """Whether ``cfg``'s policy draws at random (so inference seeds it per sample)."""
    return cfg.replay_select != "attention" or cfg.replay_random_share > 0


def policy(cfg: LatentConfig, sample_keys: Sequence[str] | None = None) -> ReplayPolicy | None:
    """The replay policy ``cfg`` asks for (``replay_select`` and the saliency options): None chooses
    by attention, the paper's way (no saliency option set).

    With ``sample_keys`` (one per row: inference, or a ``random_fixed`` training batch) the random
    forms pick per sample (:class:`SampleReplay`); without, ``random`` draws from one generator
    (:class:`RandomReplay`, training's per-epoch resampling). The saliency options give a
    :class:`SaliencyReplay`, whose ε share draws the same way."""
    if cfg.saliency_options:
        draw: RandomReplay | SampleReplay | None = None
        if cfg.replay_random_share > 0:
            draw = (
                RandomReplay(cfg.replay_seed)
                if sample_keys is None
                else SampleReplay(cfg.replay_seed, sample_keys)
            )
        return SaliencyReplay(cfg, draw)
    if cfg.replay_select == "attention":
        return None
    if sample_keys is not None:
        return SampleReplay(cfg.replay_seed, sample_keys)
    if cfg.replay_select == "random_fixed":
        raise ValueError("replay_select: 'random_fixed' picks per sample and needs one key per sample")
    return RandomReplay(cfg.replay_seed)


__all__ = [
    "PlaceholderReplay",
    "RandomReplay",
    "SaliencyReplay",
    "SampleReplay",
    "debias_rowcol",
    "diverse_keys",
    "layer_saliency",
    "needs_sample_keys",
    "policy",
    "prompt_keys",
    "sample_seed",
]
