"""The latent engine (SPEC §2.1): one code path for the cached engine and the recompute oracle.

Sequence layout::

    prompt … <|latent_start|> B¹ z¹ B² z² … B^T z^T <|latent_end|> answer

1. **Prefill** the prompt (up to and including ``<|latent_start|>``) once. Its last position
   gives the first latent z¹ (final-norm hidden state) and a¹ (its attention over the
   visual tokens, mean over layers and heads).
2. **Latent step t** selects I^t from a^t (top-K unvisited visual tokens), builds the replay
   block B^t and runs *one* pass over the chunk ``[B^t, z^t]``. The chunk's last position
   gives z^{t+1} and a^{t+1}.
3. **Decode**: ``<|latent_end|>`` and then greedy tokens, from the same cache.

How a pass is executed is the only thing that differs between engines:

- :class:`CachedRunner` appends each chunk to a ``DynamicCache`` and records a^t with the
  registered last-query attention function (:mod:`vedas.engine.attention`) — the fast kernel.
- :class:`RecomputeRunner` re-runs the whole prefix for every pass with no cache and reads
  a^t from eager ``output_attentions`` — how the reference code works. It is the test
  oracle and the baseline of the speed benchmark.

Batches are left-padded; a chunk whose sample replays fewer tokens than the widest sample
is padded on its left with masked slots, so every row equals the sample run alone.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from transformers import DynamicCache

from vedas.backbones.base import Backbone
from vedas.config import LatentConfig
from vedas.engine.attention import LastQueryRecorder
from vedas.method import replay, routing
from vedas.method.replay import VisualTokens


@dataclass
class PromptBatch:
    """A processed, left-padded batch of prompts (what the processor returns)."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    mm_token_type_ids: torch.Tensor
    pixel_values: torch.Tensor | None = None
    image_grid_thw: torch.Tensor | None = None


@dataclass
class Details:
    """Everything one ``generate`` call measured, per sample where it is a list."""

    texts: list[str]
    token_ids: list[list[int]]
    ar_steps: list[int]
    replay_indices: list[list[list[int]]]
    latents: torch.Tensor  # (B, T_r, D)
    timings_ms: dict[str, float] = field(default_factory=dict)  # batch wall time: prefill / latent / decode
    engine: str = "cached"
    mode: str = "vedas"
    tto: dict[str, Any] | None = (
        None  # test-time optimisation: loss trace per stage, extra passes (vedas.method.tto)
    )


LatentTransform = Callable[[int, torch.Tensor], torch.Tensor]
"""``transform(step, z) -> z'``: rewrites latent z^(step+1) (B, D) before it is fed back."""


class Runner(Protocol):
    def __call__(
        self,
        embeds: torch.Tensor,
        positions: torch.Tensor,
        new_mask: torch.Tensor,
        record: bool,
        implicit: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Run one pass over new tokens; returns (final-norm hidden (B, n, D), last-query attention (B, L) or None).

        ``implicit`` marks the prefill and latent chunks, the only passes routed layers may route.
        """
        ...


def _segment_ids(new_mask: torch.Tensor, implicit: bool, index: int) -> torch.Tensor:
    """Routing segment ids of one pass's tokens: ``index`` where routable, -1 for padding or explicit text."""
    if not implicit:
        return torch.full(new_mask.shape, -1, dtype=torch.long, device=new_mask.device)
    return torch.where(new_mask.bool(), index, -1)


class CachedRunner:
    """Each pass sees only its new tokens; the history lives in the KV cache."""

    def __init__(self, backbone: Backbone) -> None:
        self.decoder = backbone.decoder()
        self.cache = DynamicCache(config=backbone.model.config.get_text_config())
        self.mask: torch.Tensor | None = None

    def __call__(self, embeds, positions, new_mask, record, implicit=False):
        new = new_mask.long()
        self.mask = new if self.mask is None else torch.cat([self.mask, new], 1)
        rec = LastQueryRecorder() if record else contextlib.nullcontext()
        with rec, routing.segments(_segment_ids(new_mask, implicit, 0) if implicit else None):
            out = self.decoder(
                inputs_embeds=embeds,
                attention_mask=self.mask,
                position_ids=positions,
                past_key_values=self.cache,
                use_cache=True,
            )
        return out.last_hidden_state, (rec.mean() if record else None)


@contextlib.contextmanager
def eager_attention(model: Any) -> Iterator[None]:
    """Temporarily run the text decoder with eager attention (so attention maps can be returned)."""
    text_cfg = model.config.get_text_config()
    prev = text_cfg._attn_implementation
    model.set_attn_implementation({"text_config": "eager"})
    try:
        yield
    finally:
        model.set_attn_implementation({"text_config": prev})


class RecomputeRunner:
    """Every pass re-runs the whole prefix without a cache; attention from eager ``output_attentions``."""

    def __init__(self, backbone: Backbone) -> None:
        self.model = backbone.model
        self.decoder = backbone.decoder()
        self.embeds: torch.Tensor | None = None
        self.positions: torch.Tensor | None = None
        self.mask: torch.Tensor | None = None
        self.segments: torch.Tensor | None = None
        self.passes = 0

    def __call__(self, embeds, positions, new_mask, record, implicit=False):
        seg = _segment_ids(new_mask, implicit, self.passes)
        self.passes += 1
        if self.embeds is None:
            self.embeds, self.positions, self.mask, self.segments = embeds, positions, new_mask.long(), seg
        else:
            self.embeds = torch.cat([self.embeds, embeds], 1)
            self.positions = torch.cat([self.positions, positions], 2)
            self.mask = torch.cat([self.mask, new_mask.long()], 1)
            self.segments = torch.cat([self.segments, seg], 1)
        routed = self.segments if bool((self.segments >= 0).any()) else None
        with eager_attention(self.model), routing.segments(routed):
            out = self.decoder(
                inputs_embeds=self.embeds,
                attention_mask=self.mask,
                position_ids=self.positions,
                use_cache=False,
                output_attentions=record,
            )
        attn = None
        if record:
            rows = torch.stack([a[:, :, -1, :].float() for a in out.attentions])  # (layers, B, H, L)
            attn = rows.mean(dim=(0, 2))
        return out.last_hidden_state[:, -embeds.shape[1] :], attn


RUNNERS = {"cached": CachedRunner, "recompute": RecomputeRunner}


def make_runner(engine: str, backbone: Backbone) -> Runner:
    if engine not in RUNNERS:
        raise ValueError(f"engine={engine!r}: choose one of {sorted(RUNNERS)}")
    return RUNNERS[engine](backbone)


# --- prompt preparation --------------------------------------------------------------------


def embed_prompt(backbone: Backbone, batch: PromptBatch) -> tuple[torch.Tensor, VisualTokens, torch.Tensor]:
    """Prompt input embeddings with visual features in the image slots, the visual-token layout, and
    the prompt's 3-D rope positions (3, B, L)."""
    ids = batch.input_ids
    embeds = backbone.embed(ids)
    is_img = ids == backbone.image_token_id
    if batch.pixel_values is not None and batch.image_grid_thw is not None:
        feats = torch.cat(backbone.visual_features(batch.pixel_values, batch.image_grid_thw), 0)
        if feats.shape[0] != int(is_img.sum()):
            raise ValueError(
                f"{int(is_img.sum())} image tokens in the prompt but {feats.shape[0]} visual features"
            )
        embeds = embeds.masked_scatter(is_img[..., None], feats.to(embeds.dtype))
    positions = backbone.prompt_positions(
        ids, batch.mm_token_type_ids, batch.image_grid_thw, batch.attention_mask
    )
    n = is_img.sum(1)
    n_max = int(n.max()) if ids.shape[0] else 0
    # stable sort puts each row's image positions first, in ascending order
    order = torch.sort((~is_img).to(torch.int8), dim=1, stable=True).indices[:, :n_max]
    valid = torch.arange(n_max, device=ids.device)[None] < n[:, None]
    seq_index = torch.where(valid, order, torch.zeros_like(order))
    features = embeds.gather(1, seq_index[..., None].expand(-1, -1, embeds.shape[-1]))
    vis_pos = positions.gather(2, seq_index[None].expand(3, -1, -1))
    visual = VisualTokens(seq_index=seq_index, valid=valid, features=features, positions=vis_pos)
    if batch.image_grid_thw is not None:
        # image id, row and column of every visual token: raster order per image, images in batch order
        grids = backbone.merged_grids(batch.image_grid_thw)
        img = torch.cat([torch.full((gh * gw,), i, device=ids.device) for i, (gh, gw) in enumerate(grids)])
        row = torch.cat([torch.arange(gh * gw, device=ids.device) // gw for gh, gw in grids])
        col = torch.cat([torch.arange(gh * gw, device=ids.device) % gw for gh, gw in grids])
        flat = torch.zeros_like(ids)
        flat[is_img] = torch.arange(int(is_img.sum()), device=ids.device)
        at = flat.gather(1, seq_index)
        visual.image, visual.row, visual.col = img[at], row[at], col[at]
    return embeds, visual, positions


# --- the loop ------------------------------------------------------------------------------


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def chunk_positions(
    next_pos: torch.Tensor, token_mask: torch.Tensor, replay_pos: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rope positions (3, B, k+1) of a chunk ``[replayed…, z]`` and the advanced text counter.

    ``replay_pos`` given (``replay_positions: original``): replayed tokens reuse their source
    (t, h, w) and only z advances the counter. Otherwise every real token takes the next
    text position (all three components equal). Masked slots get the counter (never read).
    """
    rank = token_mask.long().cumsum(1) - 1
    count = token_mask.long().sum(1)
    if replay_pos is None:
        seq = next_pos[:, None] + rank.clamp(min=0)
        z = next_pos + count
        pos = torch.cat([seq, z[:, None]], 1)[None].expand(3, -1, -1)
        return pos, z + 1
    z = next_pos
    pos = torch.cat([replay_pos, z[None, :, None].expand(3, -1, 1)], 2)
    return pos, z + 1


class LatentLoop:
    """Runs prefill, T_r latent chunk passes and greedy decoding over one :class:`Runner`."""

    def __init__(
        self, backbone: Backbone, cfg: LatentConfig, runner: Runner, suppress: list[int] | None = None
    ) -> None:
        self.backbone = backbone
        self.cfg = cfg
        self.runner = runner
        self.suppress = backbone.suppressed_token_ids() + list(suppress or [])

    def prefill(self, batch: PromptBatch, record: bool) -> torch.Tensor:
        embeds, self.visual, positions = embed_prompt(self.backbone, batch)
        self.next_pos = positions.max(dim=2).values[0] + 1  # (B,)
        self.visited = torch.zeros_like(self.visual.valid)
        hidden, self.attn = self.runner(embeds, positions, batch.attention_mask, record, implicit=True)
        return hidden[:, -1]

    def latent_steps(
        self,
        h: torch.Tensor,
        steps: int,
        k: int,
        active: torch.Tensor | None = None,
        transform: LatentTransform | None = None,
        fixed: Sequence[replay.Replay | None] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, list[replay.Replay | None]]:
        """T_r chunk passes from the prefill's last state ``h``; returns (latents (B,T,D), last h, replays).

        ``active`` (B, T) bool lets samples stop early (training batches mix latent counts): an
        inactive sample's chunk is fully masked, so its cache rows are padding and its state,
        visited set and position counter stay as they were — it equals the sample run alone.
        Active steps must form a prefix per sample.

        ``transform(t, z) -> z'`` replaces each latent before it is fed (norm calibration,
        latent-use checks, test-time optimisation); the returned latents are the fed ones.

        ``fixed`` (one entry per step, e.g. an earlier run's replays) replays those blocks instead
        of selecting from attention, so forcing other latents leaves B^t unchanged (test-time
        optimisation, :mod:`vedas.method.tto`); no attention is recorded then.
        """
        cfg = self.cfg
        latents, replays = [], []
        for t in range(steps):
            z = h if cfg.latent_grad == "full" else h.detach()
            if transform is not None:
                z = transform(t, z)
            latents.append(z)
            on = None if active is None else active[:, t]
            if fixed is not None:
                rep = fixed[t]
            elif k > 0:
                assert self.attn is not None
                scores = self.attn.gather(1, self.visual.seq_index)
                rep = replay.build(scores, self.visual, self.visited, k, cfg.replay_mode, cfg.replay_scale)
            else:
                rep = None
            if rep is not None:
                if on is not None:  # a new Replay, not in place: autograd saved the old masks
                    rep = dataclasses.replace(
                        rep, mask=rep.mask & on[:, None], token_mask=rep.token_mask & on[:, None]
                    )
                self.visited = replay.mark_visited(self.visited, rep)
                tokens, tmask = rep.tokens.to(z.dtype), rep.token_mask
            else:
                tokens = z.new_zeros(z.shape[0], 0, z.shape[-1])
                tmask = torch.zeros(z.shape[0], 0, dtype=torch.bool, device=z.device)
            replays.append(rep)
            src_pos = None
            if cfg.replay_positions == "original" and rep is not None:
                src_pos = self.visual.positions.gather(2, rep.index[None].expand(3, -1, -1))
            pos, next_pos = chunk_positions(self.next_pos, tmask, src_pos)
            chunk = torch.cat([tokens, z[:, None]], 1)
            z_mask = tmask.new_ones(tmask.shape[0], 1) if on is None else on[:, None]
            mask = torch.cat([tmask, z_mask], 1)
            # the last chunk's attention would pick a replay nobody uses: skip recording it
            record = k > 0 and fixed is None and t < steps - 1
            hidden, self.attn = self.runner(chunk, pos, mask, record=record, implicit=True)
            if on is None:
                self.next_pos, h = next_pos, hidden[:, -1]
            else:
                self.next_pos = torch.where(on, next_pos, self.next_pos)
                h = torch.where(on[:, None], hidden[:, -1], h)
        stacked = torch.stack(latents, 1) if latents else h.new_zeros(h.shape[0], 0, h.shape[-1])
        return stacked, h, replays

    def feed_embeds(self, embeds: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """One explicit-phase pass over (B, n, D) right-padded inputs at the next text positions.

        Returns the final-norm hidden states (B, n, D); the counter advances by each row's real tokens.
        """
        _b, n, _ = embeds.shape
        pos = (self.next_pos[:, None] + torch.arange(n, device=embeds.device))[None].expand(3, -1, -1)
        self.next_pos = self.next_pos + mask.long().sum(1)
        hidden, _ = self.runner(embeds, pos, mask, record=False)
        return hidden

    def feed_tokens(self, token_ids: torch.Tensor) -> torch.Tensor:
        """One pass over (B, n) token ids at the next text positions; returns the last hidden state."""
        return self.feed_embeds(self.backbone.embed(token_ids), torch.ones_like(token_ids))[:, -1]

    @torch.no_grad()
    def greedy(
        self,
        h: torch.Tensor,
        max_new_tokens: int,
        eos_id: int,
        pad_id: int,
        temperature: float = 0.0,
        seeds: Sequence[int] | None = None,
    ) -> tuple[list[list[int]], torch.Tensor]:
        """Greedy decoding from the last hidden state ``h``; returns token ids per sample (EOS included) and counts.

        ``temperature > 0`` samples from softmax(logits / temperature) instead (e.g. the GAP
        difficulty split, :mod:`vedas.method.gap`). ``seeds`` (one per row) gives each row its own
        generator, so a row's samples do not depend on what else is in the batch; without
        them the global torch RNG is used.
        """
        if temperature < 0:
            raise ValueError(f"temperature: must be ≥ 0, got {temperature}")
        if seeds is not None and len(seeds) != h.shape[0]:
            raise ValueError(f"seeds: {len(seeds)} given for a batch of {h.shape[0]}")
        gens = None
        if temperature > 0 and seeds is not None:
            gens = [torch.Generator(device=h.device).manual_seed(int(s)) for s in seeds]
        head = self.backbone.lm_head()
        suppress = torch.tensor(self.suppress, device=h.device)
        b = h.shape[0]
        finished = torch.zeros(b, dtype=torch.bool, device=h.device)
        count = torch.zeros(b, dtype=torch.long, device=h.device)
        out = []
        for i in range(max_new_tokens):
            logits = head(h).float()
            logits[:, suppress] = float("-inf")
            if temperature > 0:
                probs = torch.softmax(logits / temperature, dim=-1)
                if gens is None:
                    pick = torch.multinomial(probs, 1)[:, 0]
                else:
                    pick = torch.cat(
                        [torch.multinomial(p[None], 1, generator=g)[0] for p, g in zip(probs, gens)]
                    )
            else:
                pick = logits.argmax(-1)
            tok = torch.where(finished, torch.full_like(finished, pad_id, dtype=torch.long), pick)
            out.append(tok)
            count += (~finished).long()
            finished = finished | (tok == eos_id)
            if bool(finished.all()) or i == max_new_tokens - 1:
                break
            h = self.feed_tokens(tok[:, None])
        ids = torch.stack(out, 1).tolist() if out else [[] for _ in range(b)]
        return [row[: int(c)] for row, c in zip(ids, count.tolist())], count


def row_seeds(seed: int | Sequence[int] | None, n: int) -> list[int] | None:
    """Per-row sampling seeds: an int gives rows ``seed, seed+1, …``; a sequence must have ``n`` entries."""
    if seed is None:
        return None
    if isinstance(seed, int):
        return [seed + i for i in range(n)]
    seeds = [int(s) for s in seed]
    if len(seeds) != n:
        raise ValueError(f"seed: {len(seeds)} seeds given for {n} samples")
    return seeds


def run(
    backbone: Backbone,
    batch: PromptBatch,
    cfg: LatentConfig,
    *,
    steps: int,
    latent_end_id: int | None,
    eos_id: int,
    pad_id: int,
    engine: str = "cached",
    suppress: list[int] | None = None,
    transform: LatentTransform | None = None,
    temperature: float = 0.0,
    seeds: Sequence[int] | None = None,
) -> tuple[list[list[int]], Details]:
    """Generate for one prompt batch: prefill, ``steps`` latent passes (if ``latent_end_id``), greedy decode.

    ``latent_end_id=None`` means a plain prompt (modes ``cot``/``no_cot``): decoding starts from
    the prefill's last position. ``temperature``/``seeds``: sampling instead of greedy
    decoding (see :meth:`LatentLoop.greedy`); the default is greedy.
    """
    device = batch.input_ids.device
    loop = LatentLoop(backbone, cfg, make_runner(engine, backbone), suppress)
    k = cfg.replay_k if bool(batch.input_ids.eq(backbone.image_token_id).any()) else 0
    timings: dict[str, float] = {}
    with torch.no_grad():
        _sync(device)
        t0 = time.perf_counter()
        h = loop.prefill(batch, record=latent_end_id is not None and steps > 0 and k > 0)
        _sync(device)
        t1 = time.perf_counter()
        latents, h, replays = loop.latent_steps(
            h, steps if latent_end_id is not None else 0, k, transform=transform
        )
        _sync(device)
        t2 = time.perf_counter()
        if latent_end_id is not None:
            end = torch.full((h.shape[0], 1), latent_end_id, dtype=torch.long, device=device)
            h = loop.feed_tokens(end)
        tokens, _ = loop.greedy(h, cfg.max_new_tokens, eos_id, pad_id, temperature, seeds)
        _sync(device)
        t3 = time.perf_counter()
    timings = {"prefill": (t1 - t0) * 1e3, "latent": (t2 - t1) * 1e3, "decode": (t3 - t2) * 1e3}
    n_lat = latents.shape[1]
    replay_indices = [
        [[] if r is None else r.index[b][r.mask[b]].tolist() for r in replays] for b in range(h.shape[0])
    ]
    details = Details(
        texts=[],
        token_ids=tokens,
        ar_steps=[n_lat + len(t) for t in tokens],
        replay_indices=replay_indices,
        latents=latents,
        timings_ms=timings,
        engine=engine,
    )
    return tokens, details
