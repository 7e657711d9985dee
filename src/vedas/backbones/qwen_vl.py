"""What Qwen2-VL and Qwen2.5-VL share: the Hugging Face layout of the Qwen-VL family.

Both wrap a ``*Model`` with ``.visual`` (vision tower + patch merger) and
``.language_model`` (the text decoder), compute 3-D M-RoPE positions with
``get_rope_index`` and take images as flattened patches (`pixel_values`) with a
``(t, h, w)`` grid per image. The per-architecture files only name their classes and build
tiny configs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import Qwen2VLProcessor

if TYPE_CHECKING:
    from vedas.engine.sources import VisualSources


def without_video(processor_cls: type) -> type:
    """A processor subclass with no video part (the video processor needs torchvision)."""

    class NoVideo(processor_cls):  # type: ignore[misc,valid-type]
        @classmethod
        def get_attributes(cls) -> list[str]:
            return ["image_processor", "tokenizer"]

    NoVideo.__name__ = NoVideo.__qualname__ = f"{processor_cls.__name__}NoVideo"
    return NoVideo


Qwen2VLProcessorNoVideo = without_video(Qwen2VLProcessor)


class QwenVLBackbone:
    """Backbone adapter for the Qwen-VL family (see :class:`vedas.backbones.base.Backbone`)."""

    arch = "qwen_vl"

    def __init__(self, model: nn.Module, processor: Any) -> None:
        self.model = model
        self.processor = processor
        cfg = model.config
        self.image_token_id: int = cfg.image_token_id
        self.video_token_id: int = cfg.video_token_id
        self.vision_start_token_id: int = cfg.vision_start_token_id
        self.vision_end_token_id: int = cfg.vision_end_token_id
        self.merge_size: int = cfg.vision_config.spatial_merge_size
        self.patch_size: int = cfg.vision_config.patch_size
        self.temporal_patch_size: int = cfg.vision_config.temporal_patch_size

    # --- decoder -----------------------------------------------------------------------
    def inner(self) -> nn.Module:
        return self.model.model

    def decoder(self) -> nn.Module:
        return self.inner().language_model

    def decoder_layers(self) -> nn.ModuleList:
        return self.decoder().layers

    def final_norm(self) -> nn.Module:
        return self.decoder().norm

    def lm_head(self) -> nn.Module:
        return self.model.lm_head

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model.get_input_embeddings()(input_ids)

    # --- vision ------------------------------------------------------------------------
    def visual_features(self, pixel_values: torch.Tensor, image_grid_thw: torch.Tensor) -> list[torch.Tensor]:
        out = self.inner().get_image_features(pixel_values, image_grid_thw)
        return list(out.pooler_output)

    def image_inputs(
        self, pixel_values: torch.Tensor, image_grid_thw: torch.Tensor
    ) -> tuple[list[torch.Tensor], torch.Tensor | None]:
        return self.visual_features(pixel_values, image_grid_thw), None

    def decoder_inputs(self, sources: VisualSources) -> dict[str, Any]:
        return {}

    def merged_grids(self, image_grid_thw: torch.Tensor) -> list[tuple[int, int]]:
        m = self.merge_size
        return [(int(h) // m, int(w) // m) for _, h, w in image_grid_thw.tolist()]

    def prompt_positions(
        self,
        input_ids: torch.Tensor,
        mm_token_type_ids: torch.Tensor,
        image_grid_thw: torch.Tensor | None,
        attention_mask: torch.Tensor,
    ) -> torch.Tensor:
        positions, _ = self.inner().get_rope_index(
            input_ids,
            mm_token_type_ids=mm_token_type_ids,
            image_grid_thw=image_grid_thw,
            attention_mask=attention_mask,
        )
        return positions

    def patchify(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised images (N, 3, H, W), H and W multiples of patch×merge -> (pixel_values, grid_thw).

        The same flat patch layout as the Qwen2-VL image processor (tested against it), in
        torch so crops never go through PIL.
        """
        n, c, h, w = images.shape
        p, m, t = self.patch_size, self.merge_size, self.temporal_patch_size
        gh, gw = h // p, w // p
        x = images.reshape(n, c, gh // m, m, p, gw // m, m, p)
        x = x.permute(0, 2, 5, 3, 6, 1, 4, 7)  # (n, gh/m, gw/m, m, m, c, p, p)
        x = x.unsqueeze(6).expand(*x.shape[:6], t, p, p)
        pixel_values = x.reshape(n * gh * gw, c * t * p * p)
        grid = torch.tensor([[1, gh, gw]] * n, dtype=torch.long, device=images.device)
        return pixel_values, grid

    def crop_size(self) -> tuple[int, int]:
        """Default encoder input resolution for a crop: the processor's minimum square, snapped to the grid."""
        ip = self.processor.image_processor
        factor = self.patch_size * self.merge_size
        side = max(factor, round((ip.size["shortest_edge"] ** 0.5) / factor) * factor)
        return side, side

    def encode_crops(self, crops: torch.Tensor | list[torch.Tensor]) -> torch.Tensor:
        """Pixel crops in [0, 1] -> mean-pooled visual features (N, D), one vision-tower call.

        A (N, 3, H, W) tensor is resized to :meth:`crop_size`; a list may hold crops of
        different sizes, each already a multiple of patch × merge on both sides.
        """
        ip = self.processor.image_processor
        if isinstance(crops, torch.Tensor):
            crops = list(
                F.interpolate(crops.float(), size=self.crop_size(), mode="bilinear", align_corners=False)
            )
        factor = self.patch_size * self.merge_size
        mean = torch.tensor(ip.image_mean, device=crops[0].device).view(1, -1, 1, 1)
        std = torch.tensor(ip.image_std, device=crops[0].device).view(1, -1, 1, 1)
        pixel_values, grids = [], []
        for i, crop in enumerate(crops):
            if crop.shape[-2] % factor or crop.shape[-1] % factor:
                raise ValueError(f"crops[{i}]: size {tuple(crop.shape[-2:])} is not a multiple of {factor}")
            pv, grid = self.patchify((crop[None].float() - mean) / std)
            pixel_values.append(pv)
            grids.append(grid)
        feats = self.visual_features(torch.cat(pixel_values).to(self.dtype()), torch.cat(grids))
        return torch.stack([f.mean(0) for f in feats])

    def dtype(self) -> torch.dtype:
        return self.inner().visual.dtype

    def vision_tower(self) -> nn.Module:
        return self.inner().visual

    def visible_box(self, image_hw: tuple[int, int]) -> tuple[int, int, int, int]:
        """The whole image: ``smart_resize`` resizes it to the grid, nothing is cut."""
        return 0, 0, image_hw[0], image_hw[1]

    def suppressed_token_ids(self) -> list[int]:
        return [
            self.image_token_id,
            self.video_token_id,
            self.vision_start_token_id,
            self.vision_end_token_id,
        ]
