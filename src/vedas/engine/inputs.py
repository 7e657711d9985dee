"""The engine's inputs: a processed prompt batch and its embeddings, visual-token layout and positions.

    batch = vm.prepare(images, questions)            # a PromptBatch (left-padded)
    embeds, visual, positions = embed_prompt(vm.backbone, batch)

:func:`embed_prompt` is what the prefill runs first; analyses that need the visual tokens of
a prompt without running the decoder call it directly.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vedas.backbones.base import Backbone
from vedas.engine.replay import VisualTokens


@dataclass
class PromptBatch:
    """A processed, left-padded batch of prompts (what the processor returns)."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    mm_token_type_ids: torch.Tensor
    pixel_values: torch.Tensor | None = None
    image_grid_thw: torch.Tensor | None = None


def embed_prompt(backbone: Backbone, batch: PromptBatch) -> tuple[torch.Tensor, VisualTokens, torch.Tensor]:
    """Prompt input embeddings with visual features in the image slots, the visual-token layout (with
    any per-layer rows the backbone's decoder adds at the image positions), and the prompt's 3-D
    rope positions (3, B, L)."""
    ids = batch.input_ids
    embeds = backbone.embed(ids)
    is_img = ids == backbone.image_token_id
    side = None
    if batch.pixel_values is not None and batch.image_grid_thw is not None:
        per_image, side = backbone.image_inputs(batch.pixel_values, batch.image_grid_thw)
        feats = torch.cat(per_image, 0)
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
    if side is not None:
        visual.side = _padded_rows(side.to(embeds.dtype), is_img, seq_index)
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


def _padded_rows(rows: torch.Tensor, is_img: torch.Tensor, seq_index: torch.Tensor) -> torch.Tensor:
    """(S, N_total, D) rows in prompt order (row-major over the batch) -> (S, B, N_max, D) per visual token."""
    s, _, d = rows.shape
    b, length = is_img.shape
    full = rows.new_zeros(s, b, length, d)
    full[:, is_img] = rows
    return full.gather(2, seq_index[None, ..., None].expand(s, -1, -1, d))
