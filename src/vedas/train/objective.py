"""The training objective: the inference passes, teacher-forced, and L = CE + λ · mean_t L_recon.

Training drives the same :class:`~vedas.engine.loop.LatentLoop` inference does, so it runs
exactly its passes: the prefill, T_r latent chunk passes ``[B^t, z^t]`` through a KV cache
(replay on or off as the prefill decides), then *one* teacher-forced pass over the remaining
text (``<|latent_end|>``, the explicit steps left at this stage, the answer, EOS). Logits
are computed only at labelled positions; the prompt and every latent/replay position are
unlabelled. Samples in a batch may have different latent counts (the curriculum): a
sample that is done early has its remaining chunks masked, so it equals its solo run.

For method ``vedas`` the SCF-VR loss (:func:`vedas.method.scfvr.recon_loss`) is added; ``latent``
is the same without it (and, once installed, without routing).

GAP (:mod:`vedas.method.gap`): ``latent.latent_head: pca`` and ``latent.latent_norm: ema`` rewrite each
latent through the engine's transform hook, as at inference; in training mode every batch
first folds its input-embedding norms into the norm EMA. A batch may mix latent and plain
CoT samples (difficulty-aware supervision): a CoT sample is a 0-latent sample.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vedas.config import LatentConfig
from vedas.engine.inputs import PromptBatch
from vedas.engine.loop import LatentLoop
from vedas.engine.replay import Replay
from vedas.engine.runners import make_runner
from vedas.method import gap, scfvr
from vedas.method.curriculum import Layout
from vedas.method.replay import policy as replay_policy
from vedas.methods import method as method_of


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
    mode = "vedas" if method_of(method).latent else "no_cot"
    prompt = vm.prepare_records(records, mode=mode)
    tok = vm.tokenizer
    eos = vm.eos_id
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
        use_recon = method_of(method).scfvr and recon is not None and recon.weight > 0
        self.sr = scfvr.TokenSR(dim, recon.sr) if use_recon else None
        # GAP modules (PCA latent head, norm EMA) live here too, so DDP/accelerate sync them
        self.gap = nn.ModuleDict(gap.modules(vm))
        # the routers too: as submodules of the wrapped objective, DDP all-reduces their gradients
        self.routing = vm.extras.get("routing")
        # replay_select: random draws from one policy (one generator) for the whole run: a fresh one
        # per batch would give every batch the same picks
        # per sample (random_fixed): the same picks for a question every epoch, a fresh policy per batch
        self._fixed = latent.replay_select == "random_fixed"
        self._replay_policy = None if self._fixed else replay_policy(latent)

    def forward(self, batch: TrainBatch) -> dict[str, torch.Tensor]:
        vm = self.vm[0]
        bb = vm.backbone
        policy = replay_policy(self.latent, batch.ids) if self._fixed else self._replay_policy
        loop = LatentLoop(bb, self.latent, make_runner(self.engine, bb), policy=policy)
        latent = method_of(self.method).latent
        steps = int(batch.latents.max()) if latent else 0
        h = loop.prefill(batch.prompt, record=None if steps else False)
        text, tmask = batch.target_ids, batch.target_mask
        replays: list[Replay | None] = []
        outputs = None
        if latent:
            active = torch.arange(steps, device=text.device)[None] < batch.latents[:, None]
            transform = gap.training_transform(vm, self.latent, batch.prompt, loop.visual, self.training)
            run = loop.latent_steps(h, steps, active=active, transform=transform)
            replays, outputs = run.replays, run.outputs
            end = torch.full_like(text[:, :1], vm.token_ids.end)
            inputs = torch.cat([end, text[:, :-1]], 1)
            mask = torch.cat([torch.ones_like(end), tmask[:, :-1]], 1)
            hidden = loop.feed_embeds(bb.embed(inputs), mask)
        else:
            hidden = loop.feed_embeds(bb.embed(text[:, :-1]), tmask[:, :-1])
            hidden = torch.cat([h[:, None], hidden], 1)  # the prompt's last position predicts text[0]
        # ``hidden`` is aligned with the last m positions of the whole sequence; label only those
        labels = text.masked_fill(tmask == 0, -100)
        total = loop.length
        full = torch.full((text.shape[0], total), -100, dtype=torch.long, device=text.device)
        full[:, total - labels.shape[1] :] = labels
        sel = labels != -100
        logits = bb.lm_head()(hidden[sel])  # logits only where there are labels
        ce = F.cross_entropy(logits.float(), labels[sel])
        out = {"loss": ce, "ce": ce, "labels": full}
        if self.sr is not None and replays and any(r is not None for r in replays):
            assert self.recon_cfg is not None and batch.prompt.image_grid_thw is not None
            recon = scfvr.recon_loss(
                bb,
                self.sr,
                replays,
                loop.visual,
                batch.images,
                batch.prompt.image_grid_thw,
                self.recon_cfg,
                outputs,
            )
            if recon is not None:
                out["loss"] = ce + self.recon_cfg.weight * recon
                out["recon"] = recon
        return out


def grad_ratio(params: list[nn.Parameter], ce: torch.Tensor, recon: torch.Tensor) -> dict[str, torch.Tensor]:
    """``grad_ce`` = ‖∇L_CE‖, ``grad_recon`` = ‖∇(λ·L_recon)‖ over ``params`` (the decoder's trainable
    parameters) and their ratio ``grad_ratio``: does the SCF-VR loss move the reasoning model at all?

    ``recon`` is the weighted term λ·L_recon. Two backward passes through ``autograd.grad`` with the graph
    retained: no ``.grad`` is touched, so the step's own backward and update are unchanged. A parameter
    a loss does not reach counts as a zero gradient.
    """

    def norm(loss: torch.Tensor) -> torch.Tensor:
        grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
        sq = [g.detach().float().pow(2).sum() for g in grads if g is not None]
        return torch.stack(sq).sum().sqrt() if sq else ce.new_zeros((), dtype=torch.float32)

    g_ce, g_recon = norm(ce), norm(recon)
    return {"grad_ce": g_ce, "grad_recon": g_recon, "grad_ratio": g_recon / g_ce}
