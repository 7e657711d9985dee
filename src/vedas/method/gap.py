"""GAP (arXiv 2605.12374) on the latent loop: norm calibration, PCA latent head, difficulty split.

GAP finds that fed-back hidden states live far from the input space the model knows (on
Monet-7B, output text states are ~546× the norm of input text embeddings, visual ones ~8.7×)
and closes the gap three ways. The first two act on each latent through the engine's
``transform`` hook (:meth:`vedas.engine.loop.LatentLoop.latent_steps`), in training and at
inference alike; the third decides what each training question is supervised with.

**Norm calibration** (``latent.latent_norm: ema``). A :class:`NormEMA` keeps exponential
moving averages of the mean per-token L2 norm of the input embeddings, text and visual
separately. Every fed-back latent is rescaled to the visual average (the text one when no
image was ever measured). The exact form is our decision (the paper names an EMA without
details): during training each batch updates it, ``avg ← m·avg + (1−m)·batch_mean`` with
``m = 0.99`` (the first batch sets it); for a model that was not trained with it,
:func:`calibrate_norms` sets it to the plain mean over a set of records (GAP's
inference-only experiment). It is saved with the checkpoint as the extra ``latent_norm``.

**PCA latent head** (``latent.latent_head: pca``). At training start a PCA is fit to the
visual input embeddings of the training images (:func:`fit_pca`), keeping the fewest
components whose variance share reaches ``latent.pca_variance`` (95% by default). A linear
head predicts the d coefficients from the hidden state and the fed latent is
``mean + coeffs · components``: it lies in the affine subspace the visual inputs span. The
head starts as the orthogonal projection onto that subspace (coeffs = C(h − mean)), so an
untrained head is a meaningful inference-time option too. It is the checkpoint extra
``latent_head`` (buffers: mean, components; parameters: the head). With both options the
head runs first, then the norm calibration.

**Difficulty-aware latent supervision** (``data.difficulty: FILE`` in ``vedas train``).
:func:`vedas.evaluation.difficulty.sample_difficulty` (``vedas data difficulty``) samples the base model N times per
training question at a temperature; questions it never answers correctly are *hard*. The
trainer gives hard questions the configured latent method and trains the rest as plain CoT:
in a latent batch a CoT sample is a 0-latent sample with every step explicit
(:func:`supervision`). Sample j of question q uses its own seed derived from (seed, q, j), so
the split does not depend on batching.

    from vedas.method import gap
    gap.calibrate_norms(vm, records)            # inference-only calibration of a trained model
    vm.config.latent_norm = "ema"
    gap.enable_pca_head(vm, gap.visual_embeddings(vm, records), share=0.95)
    vm.config.latent_head = "pca"
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vedas import extras
from vedas.config import ConfigError, LatentConfig
from vedas.engine.inputs import PromptBatch, embed_prompt
from vedas.engine.loop import LatentTransform
from vedas.engine.replay import VisualTokens

NORM_EXTRA = "latent_norm"
HEAD_EXTRA = "latent_head"
EXTRAS = (NORM_EXTRA, HEAD_EXTRA)
DEFAULT_MOMENTUM = 0.99
BUFFERS_FILE = "gap_buffers.safetensors"
"""Where a training checkpoint keeps the GAP buffers (the norm EMA is state, not a parameter)."""


# --- norm calibration ----------------------------------------------------------------------


class NormEMA(nn.Module):
    """Running averages of the input-embedding L2 norms (text and visual), as buffers."""

    def __init__(self, momentum: float = DEFAULT_MOMENTUM) -> None:
        super().__init__()
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum: must be in [0, 1), got {momentum}")
        self.momentum = momentum
        for kind in ("text", "visual"):
            self.register_buffer(kind, torch.zeros(1))
            self.register_buffer(f"{kind}_updates", torch.zeros(1, dtype=torch.long))

    @torch.no_grad()
    def update(
        self, text_norms: torch.Tensor, visual_norms: torch.Tensor, momentum: float | None = None
    ) -> None:
        """Fold one batch's per-token norms in: the first batch sets the average, later ones move it."""
        m = self.momentum if momentum is None else momentum
        for kind, norms in (("text", text_norms), ("visual", visual_norms)):
            if norms.numel() == 0:
                continue
            value = norms.detach().float().mean().to(self.text.device)
            avg, count = getattr(self, kind), getattr(self, f"{kind}_updates")
            avg.copy_(torch.where(count > 0, m * avg + (1 - m) * value, value))
            count.add_(1)

    def measured(self, kind: str) -> bool:
        return bool(getattr(self, f"{kind}_updates").item() > 0)

    def target(self) -> torch.Tensor:
        """The norm latents are rescaled to: the visual average, else the text one. Shape (1,)."""
        for kind in ("visual", "text"):
            if self.measured(kind):
                return getattr(self, kind)
        raise RuntimeError(
            "latent_norm='ema': no input-embedding norms measured yet; train with latent.latent_norm: ema "
            "or run vedas.method.gap.calibrate_norms(vm, records) first"
        )


def rescale(z: torch.Tensor, norm: torch.Tensor) -> torch.Tensor:
    """Each row of ``z`` scaled to L2 norm ``norm`` (direction kept)."""
    return z * (norm.to(z.dtype) / z.norm(dim=-1, keepdim=True).clamp_min(1e-12))


def input_norms(backbone: Any, batch: PromptBatch, visual: VisualTokens) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token L2 norms of a prompt batch's input embeddings: (text tokens, visual tokens).

    Text = every real (unpadded) non-image token; visual = the merger's outputs in the image slots.
    """
    ids = batch.input_ids
    text = batch.attention_mask.bool() & (ids != backbone.image_token_id)
    with torch.no_grad():
        text_norms = backbone.embed(ids)[text].float().norm(dim=-1)
        visual_norms = visual.features[visual.valid].float().norm(dim=-1)
    return text_norms, visual_norms


def enable_norm_calibration(vm: Any, momentum: float = DEFAULT_MOMENTUM) -> NormEMA:
    """Attach a fresh :class:`NormEMA` as the checkpoint extra ``latent_norm`` (replacing an old one)."""
    module = NormEMA(momentum).to(vm.device)
    vm.extras.add(NORM_EXTRA, module, {"momentum": momentum})
    return module


def _prompt_batches(vm: Any, records: Sequence[Any], batch_size: int):
    for start in range(0, len(records), batch_size):
        chunk = records[start : start + batch_size]
        batch = vm.prepare_records(chunk, mode="vedas")
        with torch.no_grad():
            _, visual, _ = embed_prompt(vm.backbone, batch)
        yield batch, visual


def calibrate_norms(vm: Any, records: Sequence[Any], batch_size: int = 8) -> NormEMA:
    """Set the norm averages to the plain per-token means over ``records`` (installing the extra if needed)."""
    if not records:
        raise ValueError("records: nothing to calibrate on")
    module = vm.extras.get(NORM_EXTRA) or enable_norm_calibration(vm)
    texts, visuals = [], []
    for batch, visual in _prompt_batches(vm, records, batch_size):
        t, v = input_norms(vm.backbone, batch, visual)
        texts.append(t)
        visuals.append(v)
    module.text_updates.zero_()
    module.visual_updates.zero_()
    module.update(torch.cat(texts), torch.cat(visuals), momentum=0.0)
    return module


# --- PCA latent head -----------------------------------------------------------------------


def fit_pca(x: torch.Tensor, share: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """PCA of rows ``x`` (N, D): (mean (D,), components (d, D), variance share of each (d,)).

    d is the fewest components whose variance shares sum to at least ``share``.
    """
    if not 0.0 < share <= 1.0:
        raise ValueError(f"share: must be in (0, 1], got {share}")
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"x: need a (N ≥ 2, D) matrix, got shape {tuple(x.shape)}")
    x64 = x.detach().double()
    mean = x64.mean(0)
    _, s, vh = torch.linalg.svd(x64 - mean, full_matrices=False)
    var = s**2
    ratio = var / var.sum()
    cum = ratio.cumsum(0)
    d = int((cum < share - 1e-12).sum()) + 1
    d = min(d, ratio.numel())
    return mean.float(), vh[:d].float(), ratio[:d].float()


class PCAHead(nn.Module):
    """latent = mean + head(h) · components: the latent stays in the visual embeddings' PCA subspace."""

    def __init__(self, dim: int, rank: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("components", torch.zeros(rank, dim))
        self.register_buffer("explained", torch.zeros(rank))
        self.coeffs = nn.Linear(dim, rank)

    @classmethod
    def fit(cls, embeddings: torch.Tensor, share: float) -> PCAHead:
        """Fit the PCA to ``embeddings`` (N, D) and start the head as the projection onto it."""
        mean, comps, ratio = fit_pca(embeddings, share)
        head = cls(comps.shape[1], comps.shape[0])
        with torch.no_grad():
            head.mean.copy_(mean)
            head.components.copy_(comps)
            head.explained.copy_(ratio)
            head.coeffs.weight.copy_(comps)
            head.coeffs.bias.copy_(-(comps @ mean))
        return head

    @property
    def rank(self) -> int:
        return int(self.components.shape[0])

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        dtype = self.coeffs.weight.dtype
        return (self.mean + self.coeffs(h.to(dtype)) @ self.components).to(h.dtype)

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """The PCA reconstruction of ``x`` (what the untrained head computes)."""
        xc = x.to(self.mean.dtype) - self.mean
        return (self.mean + (xc @ self.components.T) @ self.components).to(x.dtype)


def visual_embeddings(
    vm: Any, records: Sequence[Any], batch_size: int = 8, max_tokens: int = 50_000
) -> torch.Tensor:
    """Visual input embeddings (after the merger) of the records' images, (N, D), at most ``max_tokens``."""
    rows: list[torch.Tensor] = []
    total = 0
    for _, visual in _prompt_batches(vm, records, batch_size):
        feats = visual.features[visual.valid].float()
        rows.append(feats)
        total += feats.shape[0]
        if total >= max_tokens:
            break
    if not rows or total == 0:
        raise ValueError("records: no visual tokens to fit the PCA head on (no images?)")
    return torch.cat(rows)[:max_tokens]


def enable_pca_head(vm: Any, embeddings: torch.Tensor, share: float = 0.95) -> PCAHead:
    """Fit a :class:`PCAHead` on ``embeddings`` and attach it as the checkpoint extra ``latent_head``."""
    head = PCAHead.fit(embeddings, share).to(device=vm.device)
    vm.extras.add(HEAD_EXTRA, head, {"dim": int(embeddings.shape[1]), "rank": head.rank, "variance": share})
    return head


@extras.register(NORM_EXTRA)
def _build_norm(vm: Any, cfg: dict[str, Any]) -> nn.Module:
    return NormEMA(float(cfg.get("momentum", DEFAULT_MOMENTUM))).to(vm.device)


@extras.register(HEAD_EXTRA)
def _build_head(vm: Any, cfg: dict[str, Any]) -> nn.Module:
    return PCAHead(int(cfg["dim"]), int(cfg["rank"])).to(vm.device)


# --- the transform -------------------------------------------------------------------------


def _extra(vm: Any, name: str, option: str, how: str) -> nn.Module:
    module = vm.extras.get(name)
    if module is None:
        raise ValueError(f"{option}: the model has no {name!r} module; {how}")
    return module


def latent_transform(vm: Any, cfg: LatentConfig | None = None) -> LatentTransform | None:
    """The GAP transform ``cfg`` asks for (PCA head, then norm calibration), or None for neither."""
    cfg = cfg or vm.config
    head = ema = None
    if cfg.latent_head == "pca":
        head = _extra(
            vm,
            HEAD_EXTRA,
            "latent_head='pca'",
            "train with latent.latent_head: pca, or fit one with vedas.method.gap.enable_pca_head",
        )
    if cfg.latent_norm == "ema":
        ema = _extra(
            vm,
            NORM_EXTRA,
            "latent_norm='ema'",
            "train with latent.latent_norm: ema, or measure one with vedas.method.gap.calibrate_norms",
        )
        ema.target()  # fails now, naming the fix, if nothing was measured
    if head is None and ema is None:
        return None

    def transform(t: int, z: torch.Tensor) -> torch.Tensor:
        if head is not None:
            z = head(z)
        if ema is not None:
            z = rescale(z, ema.target())
        return z

    return transform


def modules(vm: Any) -> dict[str, nn.Module]:
    """The GAP modules installed on ``vm`` (name → module): the training objective holds them, so DDP syncs them."""
    return {n: m for n, m in vm.extras.modules().items() if n in EXTRAS}


def training_transform(
    vm: Any, cfg: LatentConfig, batch: PromptBatch, visual: VisualTokens, update: bool
) -> LatentTransform | None:
    """The training objective's GAP hook: with ``update`` (training mode) the batch's input-embedding
    norms are folded into the norm EMA first; then the same transform inference uses."""
    ema = vm.extras.get(NORM_EXTRA)
    if update and cfg.latent_norm == "ema" and ema is not None:
        ema.update(*input_norms(vm.backbone, batch, visual))
    return latent_transform(vm, cfg)


def compose(first: LatentTransform | None, then: LatentTransform | None) -> LatentTransform | None:
    """``then(t, first(t, z))``, skipping whichever is None."""
    if first is None or then is None:
        return first or then

    def both(t: int, z: torch.Tensor) -> torch.Tensor:
        return then(t, first(t, z))

    return both


def prepare_training(vm: Any, records: Sequence[Any], cfg: LatentConfig, batch_size: int = 8) -> list[str]:
    """Install the GAP modules ``cfg`` asks for and ``vm`` lacks; returns what was done, for the log.

    The PCA is fit on the visual embeddings of (at most the first 512 of) the training records.
    """
    done = []
    if cfg.latent_norm == "ema" and NORM_EXTRA not in vm.extras:
        enable_norm_calibration(vm)
        done.append("latent_norm: EMA of input-embedding norms, updated every training batch")
    if cfg.latent_head == "pca" and HEAD_EXTRA not in vm.extras:
        emb = visual_embeddings(vm, list(records[:512]), batch_size)
        head = enable_pca_head(vm, emb, cfg.pca_variance)
        done.append(
            f"latent_head: PCA of {emb.shape[0]} visual embeddings, {head.rank} of {emb.shape[1]} components "
            f"keep {100 * float(head.explained.sum()):.1f}% of the variance"
        )
    return done


def save_buffers(modules: Mapping[str, nn.Module], path: str | Path) -> None:
    """Write the buffers of the GAP modules among ``modules`` (name → module) as safetensors."""
    from safetensors.torch import save_file

    state = {
        f"{name}.{key}": t.detach().contiguous().cpu()
        for name in EXTRAS
        if name in modules
        for key, t in modules[name].named_buffers()
    }
    if state:
        save_file(state, str(path))


def load_buffers(modules: Mapping[str, nn.Module], path: str | Path) -> bool:
    """Restore what :func:`save_buffers` wrote; False when there are GAP modules but no such file."""
    from safetensors.torch import load_file

    if not any(name in modules for name in EXTRAS):
        return True
    if not Path(path).is_file():
        return False
    state = load_file(str(path))
    with torch.no_grad():
        for name in EXTRAS:
            if name in modules:
                for key, t in modules[name].named_buffers():
                    t.copy_(state[f"{name}.{key}"])
    return True


# --- difficulty-aware supervision ----------------------------------------------------------


def hard_ids(path: str | Path, record_ids: Sequence[str]) -> set[str]:
    """The all-fail question ids of a ``vedas data difficulty`` file, checked against the training ids."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"data.difficulty: {p} does not exist (write it with `vedas data difficulty`)")
    try:
        data = json.loads(p.read_text())
        hard, covered = set(data["hard_ids"]), set(data["per_question"])
    except (ValueError, KeyError, TypeError) as e:
        raise ConfigError(f"data.difficulty: {p} is not a `vedas data difficulty` file ({e})") from None
    missing = [i for i in record_ids if i not in covered]
    if missing:
        raise ConfigError(
            f"data.difficulty: {len(missing)} training records are not in {p}, e.g. {missing[:3]}; "
            "run `vedas data difficulty` on the same data"
        )
    return hard


def supervision(method: str, record_id: str, hard: set[str] | None) -> str:
    """What a training record is supervised with: the latent ``method`` if it is hard (or no split), else CoT."""
    return method if hard is None or record_id in hard else "cot"


class TrainingHooks:
    """GAP's part in a training run, through the recipe's extension points (:data:`vedas.method.TRAINING_HOOKS`):
    the difficulty split, the modules fit before training, what each record is supervised with, and
    the norm EMA saved with (and restored from) every checkpoint."""

    def difficulty_split(self, path: str | None, record_ids: Sequence[str]) -> set[str] | None:
        """The hard question ids (``data.difficulty``), or None without a split."""
        return hard_ids(path, record_ids) if path else None

    def prepare(self, vm: Any, records: Sequence[Any], cfg: LatentConfig) -> list[str]:
        """Fit the modules ``cfg`` asks for (PCA latent head, norm EMA); the lines to print."""
        return prepare_training(vm, records, cfg)

    def supervision(self, method: str, record_id: str, hard: set[str] | None) -> str:
        return supervision(method, record_id, hard)

    def save_state(self, modules: Mapping[str, nn.Module], directory: Path) -> None:
        save_buffers(modules, directory / BUFFERS_FILE)  # the norm EMA is state, not a parameter

    def load_state(self, modules: Mapping[str, nn.Module], directory: Path) -> str | None:
        """Restore the saved state; a line to print when the checkpoint has none."""
        if load_buffers(modules, directory / BUFFERS_FILE):
            return None
        return f"{directory} has no {BUFFERS_FILE}: the GAP norm EMA starts afresh"


__all__ = [
    "EXTRAS",
    "NormEMA",
    "PCAHead",
    "TrainingHooks",
    "calibrate_norms",
    "compose",
    "enable_norm_calibration",
    "enable_pca_head",
    "fit_pca",
    "hard_ids",
    "input_norms",
    "latent_transform",
    "load_buffers",
    "prepare_training",
    "rescale",
    "save_buffers",
    "supervision",
    "visual_embeddings",
]
