"""Spatially-Coherent Finer Visual Replay (SCF-VR) self-distillation (training only).

For each latent step and sample, the replayed token indices I^t are placed on the merged
grid of their image (G_h × G_w, from ``image_grid_thw`` and the merge size; images need not
be square). The W×W window holding most selected tokens is found by a vectorised 2-D box
sum (ties → the first in row-major order; W clipped to the grid), mapped to pixels of the
original image (the part of it the processor's grid covers: :meth:`Backbone.visible_box`),
cropped as a tensor, resized (bilinear) to ``zoom`` × the window's size on the input grid
(:func:`crop_cells`) and re-encoded by the same vision tower — every crop of the batch in one
call, under ``no_grad`` when the target is stop-gradient (the default, unless
``recon_target_grad``) — then mean-pooled into u_ref. The
replayed block is pooled into b^t = mean(B^t) and the loss is
L_recon^t = mean_dims (F_SR(b^t) − u_ref)², averaged over steps and samples. That is the paper's
form (``form: paper``, the default); ``form: hidden`` feeds F_SR the decoder's state after the
chunk [B^t, z^t] instead, and ``form: reference`` the reference code's unweighted, non-detached mean
(:func:`pooled`; docs/design.md#scf-vr says what each trains).

No PIL round trip happens in the training step: crops are tensor slices.

    sr = TokenSR(hidden_size, cfg.sr)
    loss = recon_loss(backbone, sr, run.replays, loop.visual, images, image_grid_thw, cfg)

:class:`vedas.train.objective.LatentObjective` adds ``cfg.weight × loss`` for method ``vedas``.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from vedas.backbones.base import Backbone
from vedas.config import _check, _check_literal
from vedas.engine.replay import Replay, VisualTokens

# --- window search -----------------------------------------------------------------------


def window_counts(grid: torch.Tensor, wh: int, ww: int) -> torch.Tensor:
    """Number of ones in every wh×ww window of ``grid`` (N, H, W): (N, H−wh+1, W−ww+1).

    A summed-area table (2-D cumulative sum) gives every box sum in O(HW), vectorised over N.
    """
    n, h, w = grid.shape
    sat = torch.zeros(n, h + 1, w + 1, dtype=torch.long, device=grid.device)
    sat[:, 1:, 1:] = grid.long().cumsum(1).cumsum(2)
    return sat[:, wh:, ww:] - sat[:, :-wh, ww:] - sat[:, wh:, :-ww] + sat[:, :-wh, :-ww]


def best_windows(
    rows: torch.Tensor, cols: torch.Tensor, valid: torch.Tensor, grids: torch.Tensor, window: int
) -> torch.Tensor:
    """Top-left corner and size of the densest window for each of N selections.

    Args:
        rows, cols: (N, k) grid coordinates of the selected tokens; ``valid`` (N, k) marks real ones.
        grids: (N, 2) the (G_h, G_w) of each selection's image.
        window: W; clipped per axis to the grid (W ≥ grid → the whole axis).

    Returns:
        (N, 4) long: r, c, window height, window width (in merged-token cells). Ties go to the
        first window in row-major order.
    """
    n = rows.shape[0]
    out = torch.zeros(n, 4, dtype=torch.long, device=rows.device)
    # group by grid shape so each group is one batched box sum (usually a single group)
    for gh, gw in {tuple(g) for g in grids.tolist()}:
        idx = ((grids[:, 0] == gh) & (grids[:, 1] == gw)).nonzero().squeeze(1)
        wh, ww = min(window, gh), min(window, gw)
        occ = torch.zeros(len(idx), gh * gw, dtype=torch.long, device=rows.device)
        flat = (rows[idx] * gw + cols[idx]).clamp(0, gh * gw - 1)
        occ.scatter_add_(1, flat, valid[idx].long())
        counts = window_counts((occ > 0).view(-1, gh, gw), wh, ww)
        best = counts.flatten(1).argmax(1)  # first maximum = first in row-major order
        nc = gw - ww + 1
        out[idx, 0], out[idx, 1] = best // nc, best % nc
        out[idx, 2], out[idx, 3] = wh, ww
    return out


def window_to_pixels(
    window: torch.Tensor, grid_hw: tuple[int, int], image_hw: tuple[int, int]
) -> tuple[int, int, int, int]:
    """Map a window (r, c, wh, ww) on a G_h×G_w merged grid to a (top, left, bottom, right) pixel box.

    The processor resized the original image (H, W) to exactly the grid, so each merged cell
    covers H/G_h × W/G_w original pixels; the box is widened to whole pixels.
    """
    r, c, wh, ww = (int(v) for v in window.tolist())
    gh, gw = grid_hw
    h, w = image_hw
    top, bottom = math.floor(r * h / gh), math.ceil((r + wh) * h / gh)
    left, right = math.floor(c * w / gw), math.ceil((c + ww) * w / gw)
    return max(top, 0), max(left, 0), min(bottom, h), min(right, w)


def image_box(
    backbone: Backbone, window: torch.Tensor, grid_hw: tuple[int, int], image_hw: tuple[int, int]
) -> tuple[int, int, int, int]:
    """The pixel box of ``window`` in the original (H, W) image: :func:`window_to_pixels` inside the
    part of the image the grid covers (:meth:`Backbone.visible_box`: all of it, or a center crop)."""
    top, left, bottom, right = backbone.visible_box(image_hw)
    t, lf, b, r = window_to_pixels(window, grid_hw, (bottom - top, right - left))
    return top + t, left + lf, top + b, left + r


# --- the reconstruction head ---------------------------------------------------------------


ZOOM = 1.25
"""Default crop zoom over the window (chosen by measurement: docs/design.md#scf-vr)."""
MAX_ZOOM = 16.0


@dataclass
class SCFVRConfig:
    """Self-distillation settings."""

    window: int = 3
    """W, the crop window in merged-token cells (clipped to the grid)."""
    weight: float = 1.0
    """λ, the recon loss weight (paper: 1.0 for 2B/3B, 0.2 for 7B)."""
    sr: Literal["linear", "mlp", "conv"] = "linear"
    """F_SR: a D→D linear map (won in the paper's Table 4), a 2-layer MLP, or a small 1-D conv."""
    recon_target_grad: bool = False
    """Let gradients flow into the vision tower through the crop target (default: stop-gradient)."""
    zoom: float = ZOOM
    """The crop's target resolution: each side of the window (in merged cells of the model's input
    grid) is scaled by ``zoom`` and snapped to whole cells (≥ 1), so a W×W window is re-encoded as
    ⌊zoom·W + ½⌋² merged tokens (default 1.25: a 3×3 window -> 4×4 cells). 0 = resize every crop to the sample's own full input size (the
    paper's "standard encoder input resolution"; T_r extra full images per sample, the old default)."""
    crop_size: int = 0
    """A fixed square side (px, snapped to patch × merge) for every crop; overrides ``zoom``. 0 = off."""
    form: Literal["paper", "hidden", "reference"] = "paper"
    """What F_SR reads (docs/design.md#scf-vr): ``paper``, b^t pooled from the *detached* replayed
    embeddings with the replay weights (its only path into the decoder is the weights softmax(a_I));
    ``hidden``, the decoder's output at z^t's position after it read B^t (the next latent), so L_recon
    trains the decoder; ``reference``, the reference code's unweighted mean of the replayed embeddings,
    not detached, with a target that is not detached either (trains the merger/tower, not the decoder)."""
    clip: Literal["joint", "separate"] = "joint"
    """``joint``: F_SR's gradient is inside the model's global clip norm (``optim.clip``); ``separate``:
    the model's parameters are clipped alone and F_SR's on their own, each to ``optim.clip``, so F_SR's
    gradient cannot shrink the model's update."""

    def __post_init__(self) -> None:
        _check(self.window >= 1, "window", f"must be ≥ 1, got {self.window}")
        _check(self.weight >= 0, "weight", f"must be ≥ 0, got {self.weight}")
        _check(
            isinstance(self.zoom, (int, float)) and not isinstance(self.zoom, bool),
            "zoom",
            f"must be a number, got {self.zoom!r}",
        )
        _check(
            math.isfinite(self.zoom) and (self.zoom == 0 or 0 < self.zoom <= MAX_ZOOM),
            "zoom",
            f"must be 0 (the sample's full input size) or in (0, {MAX_ZOOM}], got {self.zoom}",
        )
        _check(self.crop_size >= 0, "crop_size", f"must be ≥ 0, got {self.crop_size}")
        _check_literal(self, "sr")
        _check_literal(self, "form")
        _check_literal(self, "clip")

    @property
    def target_grad(self) -> bool:
        """Whether u_ref carries gradient into the vision tower (``recon_target_grad``, or the reference form)."""
        return self.recon_target_grad or self.form == "reference"


class TokenSR(nn.Module):
    """F_SR: maps the pooled replay token b^t (…, D) to the re-encoded crop's space (…, D)."""

    def __init__(self, dim: int, kind: str = "linear") -> None:
        super().__init__()
        self.kind = kind
        if kind == "linear":
            self.net: nn.Module = nn.Linear(dim, dim)
        elif kind == "mlp":
            self.net = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, dim))
        elif kind == "conv":
            # the paper names a conv variant without its form: a 1-D conv over the feature axis
            self.net = nn.Sequential(nn.Conv1d(1, 8, 5, padding=2), nn.GELU(), nn.Conv1d(8, 1, 5, padding=2))
        else:
            raise ValueError(f"sr={kind!r}: choose linear, mlp or conv")

    def forward(self, b: torch.Tensor) -> torch.Tensor:
        if self.kind == "conv":
            return self.net(b.reshape(-1, 1, b.shape[-1])).reshape(b.shape)
        return self.net(b)


def crop_cells(window: torch.Tensor, grid_hw: tuple[int, int], cfg: SCFVRConfig) -> tuple[int, int]:
    """(rows, cols) of merged cells the crop of ``window`` (r, c, wh, ww) is re-encoded at.

    ``zoom`` 0: the image's full grid ``grid_hw``; otherwise ⌊zoom · window side + ½⌋, at least 1.
    """
    if cfg.zoom == 0:
        return grid_hw
    wh, ww = int(window[2]), int(window[3])
    return max(1, math.floor(cfg.zoom * wh + 0.5)), max(1, math.floor(cfg.zoom * ww + 0.5))


def crop_and_resize(
    image: torch.Tensor, box: tuple[int, int, int, int], size: tuple[int, int]
) -> torch.Tensor:
    """Crop (3, H, W) to ``box`` and resize it bilinearly to ``size``: (3, h, w)."""
    top, left, bottom, right = box
    crop = image[:, top:bottom, left:right]
    return F.interpolate(crop[None].float(), size=size, mode="bilinear", align_corners=False)[0]


# --- the loss ------------------------------------------------------------------------------


def pooled(rep: Replay, visual: VisualTokens, form: str, output: torch.Tensor | None = None) -> torch.Tensor:
    """F_SR's input for one step, (B, D), in ``form`` (:attr:`SCFVRConfig.form`).

    ``paper``: b^t = the replay block's weighted tokens summed over the real ones / their count, from
    the visual embeddings detached: the loss reaches the model only through the replay weights
    softmax(a_I) (it does not pull the replayed embeddings themselves: the paper trains LoRA on the
    decoder only, and a vision tower trained by this loss collapses to constant features).
    ``reference``: the plain mean of the picked embeddings, not detached (the reference code's tokenSR
    input): the loss reaches the merger and tower, not the decoder. ``hidden``: ``output`` (B, D), the
    decoder's final-norm state at z^t's position after the chunk [B^t, z^t], i.e. the next latent.
    """
    if form == "hidden":
        assert output is not None, "form 'hidden' needs the chunk outputs"
        return output
    source = visual.features.detach() if form == "paper" else visual.features
    feats = source.gather(1, rep.index[..., None].expand(-1, -1, source.shape[-1]))
    if form == "reference":
        mask = rep.mask[..., None].to(feats.dtype)
        return (feats * mask).sum(1) / mask.sum(1).clamp(min=1)
    counts = rep.token_mask.sum(1)
    return (feats * rep.weights[..., None].to(feats.dtype)).sum(1) / counts.clamp(min=1)[:, None]


def recon_loss(
    backbone: Backbone,
    sr: nn.Module,
    replays: list[Replay | None],
    visual: VisualTokens,
    images: list[torch.Tensor],
    image_grid_thw: torch.Tensor,
    cfg: SCFVRConfig,
    outputs: torch.Tensor | None = None,
) -> torch.Tensor | None:
    """Mean over (step, sample) pairs with a replay of mean_dims (F_SR(b^t) − u_ref)²; None if nothing was replayed.

    ``images`` are the batch's original images, (3, H, W) in [0, 1], in the prompt's image order
    (the order of ``image_grid_thw``'s rows). ``outputs`` (B, T, D), the latent run's chunk outputs
    (:attr:`vedas.engine.loop.LatentRun.outputs`), are F_SR's input in form ``hidden``.
    """
    assert visual.image is not None and visual.row is not None and visual.col is not None
    grids = backbone.merged_grids(image_grid_thw)
    inputs, picks = [], []  # b^t per pair, and (image, rows, cols, valid) of its selection
    for t, rep in enumerate(replays):
        if rep is None:
            continue
        b = pooled(rep, visual, cfg.form, None if outputs is None else outputs[:, t])
        for i in range(rep.mask.shape[0]):
            if not bool(rep.mask[i].any()):
                continue
            sel = rep.index[i][rep.mask[i]]
            imgs = visual.image[i, sel]
            # a multi-image sample crops the image holding most of the selected tokens
            img = Counter(imgs.tolist()).most_common(1)[0][0]
            on = imgs == img
            picks.append((img, visual.row[i, sel], visual.col[i, sel], on))
            inputs.append(b[i])
    if not inputs:
        return None
    kmax = max(len(p[1]) for p in picks)
    pad = lambda t: F.pad(t, (0, kmax - len(t)))  # noqa: E731
    rows = torch.stack([pad(p[1]) for p in picks])
    cols = torch.stack([pad(p[2]) for p in picks])
    valid = torch.stack([pad(p[3].long()) for p in picks]).bool()
    pick_grids = torch.tensor([grids[p[0]] for p in picks], device=rows.device)
    windows = best_windows(rows, cols, valid, pick_grids, cfg.window)
    crops = []
    factor = backbone.patch_size * backbone.merge_size  # px of one merged cell
    fixed = max(1, round(cfg.crop_size / factor)) if cfg.crop_size else 0
    for (img, *_), win in zip(picks, windows):
        image = images[img]
        box = image_box(backbone, win, grids[img], tuple(image.shape[-2:]))
        ch, cw = (fixed, fixed) if fixed else crop_cells(win, grids[img], cfg)
        crops.append(crop_and_resize(image, box, (ch * factor, cw * factor)))
    # every crop of every step and sample in one vision-tower call; a stop-gradient target (the
    # default) builds no graph, so no tower activations are kept for backward
    with torch.set_grad_enabled(cfg.target_grad and torch.is_grad_enabled()):
        target = backbone.encode_crops(crops)
    pred = sr(torch.stack(inputs).float())
    return ((pred - target.float()) ** 2).mean()
