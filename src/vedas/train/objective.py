"""The training objective: the inference passes, teacher-forced, and L = CE + λ · mean_t L_recon.

Training runs exactly the passes inference runs (SPEC §2.1): the prefill, T_r latent chunk
passes ``[B^t, z^t]`` through a KV cache, then *one* teacher-forced pass over the remaining
text (``<|latent_end|>``, the explicit steps left at this stage, the answer, EOS). Logits
are computed only at labelled positions; the prompt and every latent/replay position are
unlabelled. Samples in a batch may have different latent counts (the curriculum): a
sample that is done early has its remaining chunks masked, so it equals its solo run.

For method ``vedas`` the SCF-VR loss (:mod:`vedas.method.scfvr`) is added; ``latent`` is the same
without it (and, once installed, without routing).

GAP (:mod:`vedas.method.gap`): ``latent.latent_head: pca`` and ``latent.latent_norm: ema`` rewrite each
latent through the engine's transform hook, as at inference; in training mode every batch
first folds its input-embedding norms into the norm EMA. A batch may mix latent and plain
CoT samples (difficulty-aware supervision): a CoT sample is a 0-latent sample.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vedas.config import LatentConfig
from vedas.engine.loop import LatentLoop, PromptBatch, make_runner
from vedas.method import gap, scfvr
from vedas.method.curriculum import LATENT_METHODS, Layout
from vedas.method.replay import Replay, VisualTokens


@dataclass
class TrainBatch:
    """A collated batch: the prompts, per-sample latent counts, the target text and original images."""

    prompt: PromptBatch
    latents: torch.Tensor  # (B,) latent steps per sample
    target_ids: torch.Tensor  # (B, n) right-padded with pad ids
    target_mask: torch.Tensor  # (B, n) 1 on real target tokens (EOS included)
    images: list[torch.Tensor]  # original images, (3, H, W) in [0, 1], in the prompt's image order
    ids: list[str]


def collate(vm: Any, records: list[Any], layouts: list[Layout], method: str) -> TrainBatch:
    """Tokenise prompts (the inference prompt builder) and targets for one batch."""
    mode = "vedas" if method in LATENT_METHODS else "no_cot"
    prompt = vm.prepare_records(records, mode=mode)
    tok = vm.tokenizer
    eos = tok.convert_tokens_to_ids("<|im_end|>")
    targets = [[*tok.encode(lay.target, add_special_tokens=False), eos] for lay in layouts]
    n = max(len(t) for t in targets)
    ids = torch.full((len(targets), n), tok.pad_token_id, dtype=torch.long)
    mask = torch.zeros(len(targets), n, dtype=torch.long)
    for i, t in enumerate(targets):
        ids[i, : len(t)] = torch.tensor(t)
        mask[i, : len(t)] = 1
    images = [
        torch.from_numpy(np.asarray(im, dtype=np.float32) / 255.0).permute(2, 0, 1)
        for r in records
        for im in r.images
    ]
    dev = vm.device
    return TrainBatch(
        prompt=prompt,
        latents=torch.tensor([lay.latents for lay in layouts], device=dev),
        target_ids=ids.to(dev),
        target_mask=mask.to(dev),
        images=[im.to(dev) for im in images],
        ids=[r.id for r in records],
    )


class LatentObjective(nn.Module):
    """Holds everything trainable (the VLM, F_SR) so DDP/accelerate can wrap one module."""

    def __init__(
        self,
        vm: Any,
        method: str,
        latent: LatentConfig,
        recon: scfvr.SCFVRConfig | None = None,
        engine: str = "cached",
    ) -> None:
        super().__init__()
        self.engine = engine  # "recompute" runs the same objective on the uncached oracle (tests)
        self.model = vm.model
        self.vm = [vm]  # a list so the wrapper is not registered as a submodule twice
        self.method = method
        self.latent = latent
        self.recon_cfg = recon
        dim = vm.model.config.get_text_config().hidden_size
        use_recon = method == "vedas" and recon is not None and recon.weight > 0
        self.sr = scfvr.TokenSR(dim, recon.sr) if use_recon else None
        # GAP modules (PCA latent head, norm EMA) live here too, so DDP/accelerate sync them
        self.gap = nn.ModuleDict({n: m for n, m in vm.extras.modules().items() if n in gap.EXTRAS})
        # the routers too: as submodules of the wrapped objective, DDP all-reduces their gradients
        self.routing = vm.extras.get("routing")

    def forward(self, batch: TrainBatch) -> dict[str, torch.Tensor]:
        vm = self.vm[0]
        bb = vm.backbone
        loop = LatentLoop(bb, self.latent, make_runner(self.engine, bb))
        latent = self.method in LATENT_METHODS
        has_img = batch.prompt.pixel_values is not None
        k = self.latent.replay_k if has_img else 0
        steps = int(batch.latents.max()) if latent else 0
        h = loop.prefill(batch.prompt, record=latent and k > 0 and steps > 0)
        text, tmask = batch.target_ids, batch.target_mask
        replays: list[Replay | None] = []
        if latent:
            active = torch.arange(steps, device=text.device)[None] < batch.latents[:, None]
            if self.training and self.latent.latent_norm == "ema" and gap.NORM_EXTRA in vm.extras:
                vm.extras.get(gap.NORM_EXTRA).update(*gap.input_norms(bb, batch.prompt, loop.visual))
            transform = gap.latent_transform(vm, self.latent)  # GAP: PCA head, norm calibration
            _, _, replays = loop.latent_steps(h, steps, k, active, transform=transform)
            end = torch.full_like(text[:, :1], vm.token_ids.end)
            inputs = torch.cat([end, text[:, :-1]], 1)
            mask = torch.cat([torch.ones_like(end), tmask[:, :-1]], 1)
            hidden = loop.feed_embeds(bb.embed(inputs), mask)
        else:
            hidden = loop.feed_embeds(bb.embed(text[:, :-1]), tmask[:, :-1])
            hidden = torch.cat([h[:, None], hidden], 1)  # the prompt's last position predicts text[0]
        # ``hidden`` is aligned with the last m positions of the whole sequence; label only those
        labels = text.masked_fill(tmask == 0, -100)
        total = loop.runner.mask.shape[1]  # type: ignore[attr-defined]
        full = torch.full((text.shape[0], total), -100, dtype=torch.long, device=text.device)
        full[:, total - labels.shape[1] :] = labels
        sel = labels != -100
        logits = bb.lm_head()(hidden[sel])  # logits only where there are labels
        ce = F.cross_entropy(logits.float(), labels[sel])
        out = {"loss": ce, "ce": ce, "labels": full}
        if self.sr is not None and replays and any(r is not None for r in replays):
            assert self.recon_cfg is not None
            recon = recon_loss(bb, self.sr, replays, loop.visual, batch, self.recon_cfg)
            if recon is not None:
                out["loss"] = ce + self.recon_cfg.weight * recon
                out["recon"] = recon
        return out


def recon_loss(
    backbone: Any,
    sr: nn.Module,
    replays: list[Replay | None],
    visual: VisualTokens,
    batch: TrainBatch,
    cfg: scfvr.SCFVRConfig,
) -> torch.Tensor | None:
    """SCF-VR: mean over (step, sample) pairs with a replay of mean_dims (F_SR(b^t) − u_ref)²."""
    assert visual.image is not None and visual.row is not None and visual.col is not None
    grids = backbone.merged_grids(batch.prompt.image_grid_thw)
    pooled, picks = [], []  # b^t per pair, and (image, rows, cols, valid) of its selection
    for rep in replays:
        if rep is None:
            continue
        # b^t = mean-pool(B^t) with the visual embeddings detached: the recon loss trains F_SR and,
        # through the replay weights softmax(a_I), the attention that picks the replay; it does not
        # pull the replayed embeddings themselves (the paper trains LoRA on the decoder only, and a
        # vision tower trained by this loss collapses to constant features)
        feats = visual.features.detach().gather(
            1, rep.index[..., None].expand(-1, -1, visual.features.shape[-1])
        )
        counts = rep.token_mask.sum(1)
        b = (feats * rep.weights[..., None].to(feats.dtype)).sum(1) / counts.clamp(min=1)[:, None]
        for i in range(rep.mask.shape[0]):
            if not bool(rep.mask[i].any()):
                continue
            sel = rep.index[i][rep.mask[i]]
            imgs = visual.image[i, sel]
            # a multi-image sample crops the image holding most of the selected tokens
            img = Counter(imgs.tolist()).most_common(1)[0][0]
            on = imgs == img
            picks.append((img, visual.row[i, sel], visual.col[i, sel], on))
            pooled.append(b[i])
    if not pooled:
        return None
    kmax = max(len(p[1]) for p in picks)
    pad = lambda t: F.pad(t, (0, kmax - len(t)))  # noqa: E731
    rows = torch.stack([pad(p[1]) for p in picks])
    cols = torch.stack([pad(p[2]) for p in picks])
    valid = torch.stack([pad(p[3].long()) for p in picks]).bool()
    pick_grids = torch.tensor([grids[p[0]] for p in picks], device=rows.device)
    windows = scfvr.best_windows(rows, cols, valid, pick_grids, cfg.window)
    crops = []
    for (img, *_), win in zip(picks, windows):
        image = batch.images[img]
        gh, gw = grids[img]
        box = scfvr.window_to_pixels(win, (gh, gw), tuple(image.shape[-2:]))
        factor = backbone.patch_size * backbone.merge_size
        size = (cfg.crop_size, cfg.crop_size) if cfg.crop_size else (gh * factor, gw * factor)
        crops.append(scfvr.crop_and_resize(image, box, size))
    with torch.set_grad_enabled(cfg.recon_target_grad and torch.is_grad_enabled()):
        target = backbone.encode_crops(crops)
    pred = sr(torch.stack(pooled).float())
    return ((pred - target.float()) ** 2).mean()
