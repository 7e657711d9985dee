"""The latent loop: prefill, latent chunk passes and decoding over one :class:`~vedas.engine.runners.Runner`.

Sequence layout::

    prompt … <|latent_start|> B¹ z¹ B² z² … B^T z^T <|latent_end|> answer

1. **Prefill** the prompt (up to and including ``<|latent_start|>``) once. Its last position
   gives the first latent z¹ (final-norm hidden state) and a¹ (its attention over the
   visual tokens, mean over layers and heads). The prefill also decides, once for the
   batch, whether replay is on: K = ``replay_k`` when the batch holds an image, else 0
   (:attr:`LatentLoop.k`); inference, training and test-time optimisation all use it.
2. **Latent step t** selects I^t from a^t (top-K unvisited visual tokens), builds the replay
   block B^t and runs *one* pass over the chunk ``[B^t, z^t]``. The chunk's last position
   gives z^{t+1} and a^{t+1}.
3. **Decode**: ``<|latent_end|>`` and then greedy tokens, from the same history.

How a pass is executed (KV cache or full recompute) is the runner's business only.
Batches are left-padded; a chunk whose sample replays fewer tokens than the widest sample
is padded on its left with masked slots, so every row equals the sample run alone.

    loop = LatentLoop(vm.backbone, vm.config, make_runner("cached", vm.backbone))
    h = loop.prefill(batch)
    start = loop.snapshot()                       # to run the latent steps again from here
    run = loop.latent_steps(h, steps=3)           # run.latents, run.hidden, run.replays
    loop.restore(start)

:func:`vedas.engine.generate.run` drives it for ``VedasModel.generate``;
:class:`vedas.train.objective.LatentObjective` drives it teacher-forced.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from vedas.backbones.base import Backbone
from vedas.config import LatentConfig
from vedas.engine import replay
from vedas.engine.inputs import PromptBatch, embed_prompt
from vedas.engine.replay import VisualTokens
from vedas.engine.runners import Runner
from vedas.engine.sources import VisualSources

LatentTransform = Callable[[int, torch.Tensor], torch.Tensor]
"""``transform(step, z) -> z'``: rewrites latent z^(step+1) (B, D) before it is fed back."""

StepCallback = Callable[[torch.Tensor, torch.Tensor], "torch.Tensor | None"]
"""``on_step(tokens, finished) -> stop``: called after each decoded token (B,) with the rows finished
so far (B,) bool; may return a (B,) bool of rows to end now (a stop sequence), or None. Serving
streams tokens and applies ``stop`` through it."""


@dataclass
class LatentRun:
    """What :meth:`LatentLoop.latent_steps` ran."""

    latents: torch.Tensor
    """(B, T, D) the latents as fed (after any transform)."""
    hidden: torch.Tensor
    """(B, D) the last chunk's last hidden state: where decoding starts."""
    replays: list[replay.Replay | None]
    """Each step's replay (None where nothing was replayed)."""
    outputs: torch.Tensor
    """(B, T, D) each chunk's last hidden state (the output at latent t's position), never detached."""


@dataclass(frozen=True)
class LoopState:
    """A point of the loop to come back to (:meth:`LatentLoop.snapshot`); opaque to callers."""

    next_pos: torch.Tensor
    visited: torch.Tensor
    attention: torch.Tensor | None
    runner: Any
    rows: torch.Tensor | None = None


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
        self,
        backbone: Backbone,
        cfg: LatentConfig,
        runner: Runner,
        suppress: list[int] | None = None,
        policy: replay.ReplayPolicy | None = None,
    ) -> None:
        """``policy`` chooses the replayed tokens instead of the attention (a control such as
        :class:`vedas.method.replay.RandomReplay`; training passes one that lives across steps)."""
        self.backbone = backbone
        self.cfg = cfg
        self._runner = runner
        self._policy = policy
        # a policy that reads chosen layers/heads has the runner keep them (nothing kept otherwise)
        self._runner.keep = getattr(policy, "record", None)
        self._rows: torch.Tensor | None = None
        self._suppress = backbone.suppressed_token_ids() + list(suppress or [])
        self._visual: VisualTokens | None = None
        self._k = 0
        self._next_pos: torch.Tensor | None = None
        self._visited: torch.Tensor | None = None
        self._attn: torch.Tensor | None = None

    # --- read-only state -------------------------------------------------------------------
    @property
    def k(self) -> int:
        """The effective replay K of this batch: ``replay_k`` if the batch holds an image, else 0."""
        return self._k

    @property
    def visual(self) -> VisualTokens:
        """The prompt's visual tokens (layout, input embeddings, positions)."""
        if self._visual is None:
            raise RuntimeError("call prefill() first")
        return self._visual

    @property
    def attention(self) -> torch.Tensor | None:
        """The last recorded a^t (B, L): after the prefill, a¹; None where nothing was recorded."""
        return self._attn

    @property
    def length(self) -> int:
        """The sequence length so far (prompt, replays, latents and decoded tokens; padding included)."""
        return self._runner.length

    # --- roll back -------------------------------------------------------------------------
    def snapshot(self) -> LoopState:
        """The loop's current point (e.g. right after the prefill), for :meth:`restore`."""
        if self._next_pos is None or self._visited is None:
            raise RuntimeError("snapshot: call prefill() first")
        return LoopState(self._next_pos, self._visited, self._attn, self._runner.snapshot(), self._rows)

    def restore(self, state: LoopState) -> None:
        """Go back to ``state``: every pass since is forgotten (the cached runner crops its cache
        and detaches what is left; the recompute runner truncates its prefix)."""
        self._next_pos, self._visited, self._attn = state.next_pos, state.visited, state.attention
        self._rows = state.rows
        self._runner.restore(state.runner)

    # --- passes ----------------------------------------------------------------------------
    def prefill(self, batch: PromptBatch, record: bool | None = None) -> torch.Tensor:
        """Run the prompt; returns its last final-norm hidden state (B, D), the first latent's source.

        Decides replay for the batch (:attr:`k`). ``record``: keep a¹ (:attr:`attention`);
        None keeps it exactly when replay is on. A batch without an image records nothing.
        """
        embeds, visual, positions = embed_prompt(self.backbone, batch)
        has_image = bool(visual.valid.any())
        self._visual = visual
        self._k = self.cfg.replay_k if has_image else 0
        self._next_pos = positions.max(dim=2).values[0] + 1  # (B,)
        self._visited = torch.zeros_like(visual.valid)
        record = self._k > 0 if record is None else record and has_image
        sources = VisualSources.prompt(visual, embeds.shape[1])
        hidden, self._attn = self._runner(
            embeds, positions, batch.attention_mask, record, implicit=True, sources=sources
        )
        self._rows = self._runner.rows if record else None
        return hidden[:, -1]

    def latent_steps(
        self,
        h: torch.Tensor,
        steps: int,
        k: int | None = None,
        active: torch.Tensor | None = None,
        transform: LatentTransform | None = None,
        fixed: Sequence[replay.Replay | None] | None = None,
    ) -> LatentRun:
        """T_r chunk passes from the prefill's last state ``h``.

        ``k`` overrides the batch's replay K (:attr:`k`, the default).

        ``active`` (B, T) bool lets samples stop early (training batches mix latent counts): an
        inactive sample's chunk is fully masked, so its history rows are padding and its state,
        visited set and position counter stay as they were — it equals the sample run alone.
        Active steps must form a prefix per sample.

        ``transform(t, z) -> z'`` replaces each latent before it is fed (norm calibration,
        latent-use checks, test-time optimisation); the returned latents are the fed ones.

        ``fixed`` (one entry per step, e.g. an earlier run's replays) replays those blocks instead
        of selecting from attention, so forcing other latents leaves B^t unchanged (test-time
        optimisation, :mod:`vedas.method.tto`); no attention is recorded then.
        """
        k = self._k if k is None else k
        latents, outputs, replays = [], [], []
        for t in range(steps):
            z = h if self.cfg.latent_grad == "full" else h.detach()
            if transform is not None:
                z = transform(t, z)
            latents.append(z)
            on = None if active is None else active[:, t]
            rep = fixed[t] if fixed is not None else self._select(k) if k > 0 else None
            if rep is not None and on is not None:  # a new Replay, not in place: autograd saved the old masks
                rep = dataclasses.replace(
                    rep, mask=rep.mask & on[:, None], token_mask=rep.token_mask & on[:, None]
                )
            # the last chunk's attention would pick a replay nobody uses: skip recording it
            record = k > 0 and fixed is None and t < steps - 1
            h = self._chunk(z, rep, on, record, h)
            replays.append(rep)
            outputs.append(h)
        empty = h.new_zeros(h.shape[0], 0, h.shape[-1])
        return LatentRun(
            latents=torch.stack(latents, 1) if latents else empty,
            hidden=h,
            replays=replays,
            outputs=torch.stack(outputs, 1) if outputs else empty,
        )

    def _select(self, k: int) -> replay.Replay:
        assert self._attn is not None and self._visited is not None
        visual, cfg = self.visual, self.cfg
        scores = self._attn.gather(1, visual.seq_index)
        keys = feats = None
        if self._policy is not None:
            rows = None
            if self._rows is not None:  # (B, layers[, H], L) -> the visual tokens' columns
                index = visual.seq_index.view(visual.seq_index.shape[0], *[1] * (self._rows.dim() - 2), -1)
                rows = self._rows.gather(-1, index.expand(*self._rows.shape[:-1], -1))
            step = replay.Step(visual, self._visited, k, rows)
            keys, feats = self._policy.keys(scores, visual.valid, step), self._policy.content(visual)
        return replay.build(scores, visual, self._visited, k, cfg.replay_mode, cfg.replay_scale, keys, feats)

    def _chunk(
        self,
        z: torch.Tensor,
        rep: replay.Replay | None,
        on: torch.Tensor | None,
        record: bool,
        h: torch.Tensor,
    ) -> torch.Tensor:
        """One pass over ``[B^t, z]`` (``rep`` already masked to the active rows ``on``).

        Returns the next state; inactive rows keep ``h``.
        """
        assert self._next_pos is not None and self._visited is not None
        if rep is not None:
            self._visited = replay.mark_visited(self._visited, rep)
            tokens, tmask = rep.tokens.to(z.dtype), rep.token_mask
        else:
            tokens = z.new_zeros(z.shape[0], 0, z.shape[-1])
            tmask = torch.zeros(z.shape[0], 0, dtype=torch.bool, device=z.device)
        src_pos = None
        if self.cfg.replay_positions == "original" and rep is not None:
            src_pos = self.visual.positions.gather(2, rep.index[None].expand(3, -1, -1))
        pos, next_pos = chunk_positions(self._next_pos, tmask, src_pos)
        chunk = torch.cat([tokens, z[:, None]], 1)
        z_mask = tmask.new_ones(tmask.shape[0], 1) if on is None else on[:, None]
        mask = torch.cat([tmask, z_mask], 1)
        sources = None if rep is None else VisualSources.replay(rep, self.visual)
        hidden, self._attn = self._runner(chunk, pos, mask, record=record, implicit=True, sources=sources)
        self._rows = self._runner.rows if record else None
        if on is None:
            self._next_pos = next_pos
            return hidden[:, -1]
        self._next_pos = torch.where(on, next_pos, self._next_pos)
        return torch.where(on[:, None], hidden[:, -1], h)

    def feed_embeds(self, embeds: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """One explicit-phase pass over (B, n, D) right-padded inputs at the next text positions.

        Returns the final-norm hidden states (B, n, D); the counter advances by each row's real tokens.
        """
        assert self._next_pos is not None, "call prefill() first"
        _b, n, _ = embeds.shape
        pos = (self._next_pos[:, None] + torch.arange(n, device=embeds.device))[None].expand(3, -1, -1)
        self._next_pos = self._next_pos + mask.long().sum(1)
        hidden, _ = self._runner(embeds, pos, mask, record=False)
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
        on_step: StepCallback | None = None,
    ) -> tuple[list[list[int]], torch.Tensor]:
        """Greedy decoding from the last hidden state ``h``; returns token ids per sample (EOS included) and counts.

        ``temperature > 0`` samples from softmax(logits / temperature) instead (e.g. the GAP
        difficulty split, :mod:`vedas.method.gap`). ``seeds`` (one per row) gives each row its own
        generator, so a row's samples do not depend on what else is in the batch; without
        them the global torch RNG is used. ``on_step``: see :data:`StepCallback` (a row it ends keeps
        the token just decoded).
        """
        if temperature < 0:
            raise ValueError(f"temperature: must be ≥ 0, got {temperature}")
        if seeds is not None and len(seeds) != h.shape[0]:
            raise ValueError(f"seeds: {len(seeds)} given for a batch of {h.shape[0]}")
        gens = None
        if temperature > 0 and seeds is not None:
            gens = [torch.Generator(device=h.device).manual_seed(int(s)) for s in seeds]
        head = self.backbone.lm_head()
        suppress = torch.tensor(self._suppress, device=h.device)
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
            if on_step is not None and (stop := on_step(tok, finished)) is not None:
                finished = finished | stop.to(finished.device)
            if bool(finished.all()) or i == max_new_tokens - 1:
                break
            h = self.feed_tokens(tok[:, None])
        ids = torch.stack(out, 1).tolist() if out else [[] for _ in range(b)]
        return [row[: int(c)] for row, c in zip(ids, count.tolist())], count
