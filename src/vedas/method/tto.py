"""Inference-time latent optimisation with a frozen backbone (arXiv 2605.02735).

"Visual latents know more than they say": the T_r latents are treated as free tensors,
initialised from the normal forward, and optimised per question before the answer is
decoded; no weight changes.

    from vedas.method.tto import TTOConfig
    d = vm.generate(images, questions, choices, tto=TTOConfig(stages=["stage1", "stage2"], steps=5))
    d.timings_ms["tto"], d.tto["loss"]            # the extra time; each stage's loss, step by step

    vedas eval ... --tto stage1,stage2 --tto-steps 5 --tto-lr 0.01

Stages (run in the order given, ``steps`` Adam steps each, a fresh optimiser per stage; the
learning rate is relative to each latent's initial RMS coordinate, so one setting moves a
tiny model's latents and a 7B model's alike):

- **stage1**, query-guided contrastive latent–visual alignment. The anchor of sample i is
  its *query-attended visual embedding* v_i = Σ_j a_ij V_ij / Σ_j a_ij: the visual input
  embeddings V of the sample's image(s) weighted by the prefill's last-position attention a
  (the question and ``<|latent_start|>`` attending over the image, mean over layers and
  heads — the same a¹ that picks the first replay). Every latent z_i^t is pulled toward v_i
  against the other samples' anchors with InfoNCE over cosine similarities at temperature τ:
  L₁ = Σ_i mean_t −log softmax_j(cos(z_i^t − m^t, v_j − v̄)/τ)[i], where v̄ is the anchors'
  batch mean and m^t the initial latents' batch mean at step t (a constant). Removing the
  shared component is our decision: on similar images the raw anchors are nearly collinear
  (cos ≈ 1.000 between different images on the synthetic benchmark), which pins InfoNCE at its
  chance value ln B. A batch with one image-bearing sample has no negatives: that sample uses
  1 − cos(z_i^t, v_i). Samples without an image take no part.
- **stage2**, confidence progression. H_t is the entropy of the LM-head distribution at
  the position of latent t (the output of the chunk pass that fed z^t). The distribution
  should sharpen along the span: L₂ = Σ_i mean_t max(0, H_{t+1} − H_t + margin).

Each stage-2 step re-runs the latent chunk passes from the prefill with the latents forced
(the loop's ``transform`` returns the free tensor) and back-propagates into the latents
only (``torch.autograd.grad`` on them: no weight is written, no ``.grad`` is set). The loop
is rolled back to the prefill (``LatentLoop.restore``: the KV cache is cropped) before each
pass, so the prompt is encoded once. **The replayed blocks B^t of the first run are kept fixed**
(indices and weights): only the latents change, the loss is a smooth function of them, and
the final decode sees exactly the blocks the latents were optimised with. Stage 1 needs no
pass. Latents are optimised as fed, after any GAP transform of the first run (a calibrated
norm is not re-imposed). After the last stage the latent passes run once more with the
optimised latents and the answer is decoded greedily from that cache.

TTO is a :class:`vedas.engine.generate.LatentHook` (:class:`TTOHook`): the generation driver
runs the prefill and the first latent run as always and hands them over. Timings:
``prefill``, ``latent`` (the first run, as without TTO), ``tto`` (the optimisation and the
re-run of the latent passes) and ``decode``. Losses are summed over samples, so with
stage 2 alone each sample's result is the one it gets alone; stage 1 couples the samples of
a batch through its negatives.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from vedas.config import ConfigError, _check, from_dict

if TYPE_CHECKING:  # the engine pulls in transformers; `vedas --help` only needs the flags below
    from vedas.engine.loop import LatentLoop, LatentRun, LoopState
    from vedas.engine.replay import Replay, VisualTokens

STAGES = ("stage1", "stage2")


@dataclass
class TTOConfig:
    """Test-time latent optimisation settings (``--tto``, ``--tto-steps``, ``--tto-lr``)."""

    stages: list[str] = field(default_factory=lambda: list(STAGES))
    """Stages to run, in order: ``stage1`` (contrastive latent–visual alignment), ``stage2`` (confidence progression)."""
    steps: int = 5
    """Adam steps per stage."""
    lr: float = 0.05
    """Adam learning rate, relative: each latent is optimised in units of its initial RMS coordinate,
    so a step moves every coordinate by about ``lr`` × that RMS whatever the backbone's scale."""
    temperature: float = 0.1
    """InfoNCE temperature τ of stage 1."""
    margin: float = 0.0
    """Stage 2 hinge margin: H_{t+1} − H_t + margin is penalised when positive."""

    def __post_init__(self) -> None:
        _check(
            isinstance(self.stages, list) and len(self.stages) > 0,
            "stages",
            f"must be a non-empty list, got {self.stages!r}",
        )
        bad = [s for s in self.stages if s not in STAGES]
        _check(not bad, "stages", f"unknown stage(s) {bad}; choose from {list(STAGES)}")
        _check(len(set(self.stages)) == len(self.stages), "stages", f"a stage is repeated in {self.stages}")
        _check(
            isinstance(self.steps, int) and self.steps >= 0,
            "steps",
            f"must be an int ≥ 0, got {self.steps!r}",
        )
        _check(self.lr > 0, "lr", f"must be > 0, got {self.lr!r}")
        _check(self.temperature > 0, "temperature", f"must be > 0, got {self.temperature!r}")
        _check(self.margin >= 0, "margin", f"must be ≥ 0, got {self.margin!r}")


# --- the objectives ------------------------------------------------------------------------


def query_visual(attn: torch.Tensor, visual: VisualTokens) -> tuple[torch.Tensor, torch.Tensor]:
    """Each sample's query-attended visual embedding (B, D) and whether it has one (B,)."""
    a = attn.gather(1, visual.seq_index).float() * visual.valid
    w = a / a.sum(1, keepdim=True).clamp_min(1e-12)
    v = (w[..., None] * visual.features.float()).sum(1)
    return v, visual.valid.any(1)


def alignment_loss(
    latents: torch.Tensor,
    anchors: torch.Tensor,
    has: torch.Tensor,
    tau: float,
    center: torch.Tensor | None = None,
) -> torch.Tensor:
    """Stage 1: InfoNCE of every latent (B, T, D) against the batch's anchors (B, D); summed over samples.

    Both sides lose the batch's shared component first: the anchors their mean, the latents
    ``center`` (T, D) — the initial latents' mean per step — or, if None, their own detached mean.
    A lone image-bearing sample (no negatives, nothing to centre against) gets 1 − cos(z, v).
    """
    s = int(has.sum())
    if s == 0:
        return latents.sum() * 0.0
    z, v = latents[has].float(), anchors[has].float()  # (S, T, D), (S, D)
    if s == 1:
        return (1 - F.cosine_similarity(z[0], v[0][None], dim=-1)).mean()
    mean = z.detach().mean(0) if center is None else center.float()
    z = F.normalize(z - mean, dim=-1)
    v = F.normalize(v - v.mean(0), dim=-1)
    logits = torch.einsum("std,jd->stj", z, v) / tau  # (S, T, S)
    target = torch.arange(s, device=z.device)[:, None].expand(-1, z.shape[1])
    ce = F.cross_entropy(logits.reshape(-1, s), target.reshape(-1), reduction="none")
    return ce.view(s, -1).mean(1).sum()


def span_entropy(head: torch.nn.Module, outputs: torch.Tensor) -> torch.Tensor:
    """Entropy of the LM-head distribution at each latent position: (B, T, D) -> (B, T)."""
    logp = torch.log_softmax(head(outputs).float(), dim=-1)
    return -(logp.exp() * logp).sum(-1)


def progression_loss(entropy: torch.Tensor, margin: float = 0.0) -> torch.Tensor:
    """Stage 2: Σ_samples mean_t max(0, H_{t+1} − H_t + margin); zero for fewer than two latents."""
    if entropy.shape[1] < 2:
        return entropy.sum() * 0.0
    return F.relu(entropy[:, 1:] - entropy[:, :-1] + margin).mean(1).sum()


# --- the optimiser -------------------------------------------------------------------------


class LatentOptimiser:
    """Re-runs the latent passes of one prefilled batch with forced latents and fixed replays."""

    def __init__(
        self,
        loop: LatentLoop,
        start: LoopState,
        h0: torch.Tensor,
        replays: list[Replay | None],
        cfg: TTOConfig,
    ) -> None:
        self.loop, self.start, self.h0, self.replays, self.cfg = loop, start, h0, replays, cfg
        loop.restore(start)
        self.prefill_attention = loop.attention  # a¹: what stage 1's anchors weight the image by
        self.passes = 0

    def forced(self, latents: torch.Tensor) -> LatentRun:
        """Latent passes from the prefill feeding ``latents`` (B, T, D) with the first run's replays.

        The run's ``outputs`` are the hidden states at each latent's position (B, T, D).
        """
        self.loop.restore(self.start)
        steps = len(self.replays)
        run = self.loop.latent_steps(
            self.h0, steps, transform=lambda t, z: latents[:, t].to(z.dtype), fixed=self.replays
        )
        self.passes += steps
        return run

    def optimise(self, init: torch.Tensor) -> tuple[torch.Tensor, dict[str, list[float]]]:
        """Run the stages from ``init``; returns the optimised latents and each stage's loss trace."""
        cfg = self.cfg
        head = self.loop.backbone.lm_head()
        anchors = has = center = None
        if "stage1" in cfg.stages:
            if self.prefill_attention is None or not bool(self.loop.visual.valid.any()):
                raise ValueError("tto: stage1 aligns latents with the image; no sample in this batch has one")
            anchors, has = query_visual(self.prefill_attention, self.loop.visual)
            center = init[has].detach().mean(0)

        def loss(stage: str, z: torch.Tensor) -> torch.Tensor:
            if stage == "stage1":
                assert anchors is not None and has is not None
                return alignment_loss(z, anchors, has, cfg.temperature, center)
            return progression_loss(span_entropy(head, self.forced(z).outputs), cfg.margin)

        # optimise u = z / scale, scale = each latent's initial RMS coordinate: lr is scale-free
        scale = init.detach().float().pow(2).mean(-1, keepdim=True).sqrt().clamp_min(1e-12).to(init.dtype)
        z = init.detach().clone()
        history: dict[str, list[float]] = {}
        for stage in cfg.stages:
            free = (z / scale).requires_grad_(True)
            opt = torch.optim.Adam([free], lr=cfg.lr)
            trace = []
            for _ in range(cfg.steps):
                with torch.enable_grad():
                    value = loss(stage, free * scale)
                    (grad,) = torch.autograd.grad(value, [free], allow_unused=True)
                trace.append(float(value.detach()))
                free.grad = torch.zeros_like(free) if grad is None else grad
                opt.step()
            if cfg.steps:  # (z / scale) * scale is z only to rounding: no steps, no change
                z = (free * scale).detach()
            # a last stage 2 gets its final value from the re-run before decoding (no extra pass)
            if not (stage == "stage2" and stage == cfg.stages[-1] and cfg.steps > 0):
                with torch.no_grad():
                    trace.append(float(loss(stage, z)))
            history[stage] = trace
        return z, history


class TTOHook:
    """Test-time optimisation as the generation driver's :class:`vedas.engine.generate.LatentHook`.

    ``VedasModel.generate(..., tto=cfg)`` passes ``TTOHook(cfg)``. Its report (``Details.tto``)
    holds ``loss`` (stage → its loss before every step and after the last) and ``passes``
    (extra latent chunk passes: stage-2 steps × T_r, plus the final re-run).
    """

    name = "tto"

    def __init__(self, cfg: TTOConfig) -> None:
        self.cfg = cfg
        # stage 1 weights the image by a¹ even where no replay needs it
        self.record: bool | None = True if "stage1" in cfg.stages else None

    def check(self, engine: str, steps: int) -> None:
        if steps < 1:
            raise ValueError("tto: needs a latent mode (vedas or latent) with at least one latent step")
        if engine != "cached":
            raise ValueError(f"tto: runs on the cached engine, got engine={engine!r}")

    def __call__(
        self, loop: LatentLoop, start: LoopState, h0: torch.Tensor, first: LatentRun
    ) -> tuple[LatentRun, dict[str, Any]]:
        """Optimise the first run's latents; returns the re-run with them (to decode from) and the report."""
        cfg = self.cfg
        opt = LatentOptimiser(loop, start, h0, first.replays, cfg)
        latents, history = opt.optimise(first.latents)
        final = opt.forced(latents)
        if cfg.stages[-1] == "stage2" and cfg.steps > 0:
            loss = progression_loss(span_entropy(loop.backbone.lm_head(), final.outputs), cfg.margin)
            history["stage2"].append(float(loss))
        return final, {"loss": history, "passes": opt.passes}


# --- command-line flags (vedas eval / vedas infer) -----------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``--tto STAGES``, ``--tto-steps N``, ``--tto-lr X`` (declared in :func:`vedas.cli_args.add_tto`)."""
    from vedas import cli_args

    cli_args.add_tto(parser)


def from_args(args: argparse.Namespace) -> TTOConfig | None:
    """The :class:`TTOConfig` the flags ask for, or None without ``--tto``; bad values raise ConfigError."""
    if not args.tto:
        return None
    stages = [s.strip() for s in args.tto.split(",") if s.strip()]
    try:
        return from_dict(TTOConfig, {"stages": stages, "steps": args.tto_steps, "lr": args.tto_lr})
    except ConfigError as e:
        raise ConfigError(f"--tto: {e}") from None


__all__ = [
    "STAGES",
    "LatentOptimiser",
    "TTOConfig",
    "TTOHook",
    "add_arguments",
    "alignment_loss",
    "from_args",
    "progression_loss",
    "query_visual",
    "span_entropy",
]
