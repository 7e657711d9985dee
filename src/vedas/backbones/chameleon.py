"""Chameleon (``facebook/chameleon-7b``, ``-30b``): the adapter, its processor and a tiny config.

Chameleon has no vision tower in the Qwen sense: a VQ-VAE turns each (square, center-cropped)
image into a G×G grid of discrete codes, the ``vocabulary_map`` maps each code to an ordinary
vocabulary id, and the decoder reads those ids' ``embed_tokens`` rows at the image's
``<image>`` placeholders (``get_image_tokens`` / ``get_image_features``). So here:

- a visual token is one VQ cell: its input embedding is the ``embed_tokens`` row of its
  code's vocabulary id, raster order, and the merged grid is the VQ grid (32×32 at 512 px);
  ``patch_size`` is the pixels per VQ cell side and ``merge_size`` is 1;
- positions are plain 1-D RoPE. The engine works in (3, B, L) positions, so
  :meth:`ChameleonBackbone.prompt_positions` repeats the 1-D position (cumsum of the padding
  mask: left padding does not shift a row) on all three axes, and :meth:`decoder` is a thin
  wrapper that hands the HF decoder their first row, always explicitly (the HF model
  otherwise counts positions from the cache length, ignoring padding);
- SCF-VR re-encodes a crop through the VQ-VAE into codes, embeds them and mean-pools. The
  code choice is an argmin, so no gradient reaches the VQ-VAE; with ``recon_target_grad``
  only the embedding rows of the crop's codes receive one.

The shipped processor center-crops every image to a square; :func:`visible_box` says which
part of the original image the grid covers, so SCF-VR crops the right pixels.
"""

from __future__ import annotations

import contextlib
import math
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import ChameleonConfig, ChameleonForConditionalGeneration, ChameleonProcessor
from transformers.models.chameleon.image_processing_pil_chameleon import ChameleonImageProcessorPil

from vedas.backbones.base import oracle_maps

if TYPE_CHECKING:
    from vedas.engine.sources import VisualSources

MODEL_TYPE = "chameleon"
MODEL_CLASS = ChameleonForConditionalGeneration


class ChameleonProcessorForVedas(ChameleonProcessor):
    """The Chameleon processor as the engine takes it: prompts are completed as given (no chat
    separator appended), ``mm_token_type_ids`` returned, and ``image_grid_thw`` ((1, G, G) per
    image: the VQ grid, from ``image_seq_length``) added beside ``pixel_values``."""

    return_for_text_completion = True
    return_mm_token_type_ids = True

    def __init__(
        self,
        image_processor: Any,
        tokenizer: Any,
        image_seq_length: int = 1024,
        image_token: str = "<image>",
        chat_template: str | None = None,
    ) -> None:
        super().__init__(
            image_processor, tokenizer, image_seq_length=image_seq_length, image_token=image_token
        )
        if chat_template is not None:  # the parent's __init__ takes none, so a saved one was lost on load
            self.chat_template = chat_template

    def __call__(self, images: Any = None, text: Any = None, **kwargs: Any) -> Any:
        out = super().__call__(images=images, text=text, **kwargs)
        if "pixel_values" in out:
            side = math.isqrt(self.image_seq_length)
            if side * side != self.image_seq_length:
                raise ValueError(f"image_seq_length={self.image_seq_length} is not a square VQ grid")
            grid = torch.tensor([[1, side, side]] * len(out["pixel_values"]), dtype=torch.long)
            out["image_grid_thw"] = grid
        return out


PROCESSOR_CLASS = ChameleonProcessorForVedas


class OneDimDecoder(nn.Module):
    """The Chameleon decoder called the engine's way: (3, B, L) positions, of which it uses the first row.

    Not a copy of the model: it holds the HF ``ChameleonModel`` and forwards every call to it.
    ``rotary_emb`` is wrapped the same way (routing computes rope embeddings from (3, B, n) ranks).
    ``ChameleonAttention`` takes ``output_attentions`` as an argument and does not pass it to the
    attention kernel, so a call asking for attentions tells the recompute oracle's kernel directly
    (:class:`vedas.backbones.base.oracle_maps`).
    """

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.rotary_emb = OneDimRotary(inner.rotary_emb)

    def forward(self, *, position_ids: torch.Tensor, **kwargs: Any) -> Any:
        maps = oracle_maps() if kwargs.get("output_attentions") else contextlib.nullcontext()
        with maps:
            return self.inner(position_ids=one_dim(position_ids), **kwargs)


class OneDimRotary(nn.Module):
    def __init__(self, rotary: nn.Module) -> None:
        super().__init__()
        self.rotary = rotary

    def forward(self, x: torch.Tensor, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.rotary(x, one_dim(position_ids))


def one_dim(position_ids: torch.Tensor) -> torch.Tensor:
    """(3, B, L) engine positions (all rows equal for a 1-D rope model) -> (B, L); (B, L) passes through."""
    if position_ids is None:
        raise ValueError("position_ids: the Chameleon adapter needs explicit positions (got None)")
    return position_ids[0] if position_ids.dim() == 3 else position_ids


def visible_box(
    image_hw: tuple[int, int], shortest_edge: int, crop_hw: tuple[int, int]
) -> tuple[int, int, int, int]:
    """The (top, left, bottom, right) box of an (H, W) image that "resize shortest edge, center crop" keeps.

    The processor scales the image so its shorter side is ``shortest_edge`` and cuts the central
    ``crop_hw``; mapped back, that is the central region of the original, widened to whole pixels.
    """
    h, w = image_hw
    scale = shortest_edge / min(h, w)
    long = int(shortest_edge * max(h, w) / min(h, w))  # the processor's own rounding (down)
    rh, rw = (shortest_edge, long) if h <= w else (long, shortest_edge)
    ch, cw = crop_hw
    top, left = (rh - ch) // 2, (rw - cw) // 2
    t, b = math.floor(top / scale), math.ceil((top + ch) / scale)
    lf, r = math.floor(left / scale), math.ceil((left + cw) / scale)
    return max(t, 0), max(lf, 0), min(b, h), min(r, w)


class ChameleonBackbone:
    """Backbone adapter for Chameleon (see :class:`vedas.backbones.base.Backbone`)."""

    arch = MODEL_TYPE

    def __init__(self, model: nn.Module, processor: Any) -> None:
        self.model = model
        self.processor = processor
        cfg = model.config
        vmap = cfg.vocabulary_map or {}
        if "<image>" not in vmap:
            raise ValueError("config.vocabulary_map: has no '<image>' entry; is this a Chameleon checkpoint?")
        self.image_token_id: int = int(cfg.image_token_id)
        self.image_start_token_id: int = int(processor.image_start_token_id)
        self.image_end_token_id: int = int(processor.image_end_token_id)
        down = 2 ** (len(cfg.vq_config.channel_multiplier) - 1)
        self.patch_size: int = down
        """Pixels per VQ cell side (the VQ-VAE's downsampling factor)."""
        self.merge_size: int = 1
        self._decoder = OneDimDecoder(self.inner())

    # --- decoder -----------------------------------------------------------------------
    def inner(self) -> nn.Module:
        return self.model.model

    def decoder(self) -> nn.Module:
        return self._decoder

    def decoder_layers(self) -> nn.ModuleList:
        return self.inner().layers

    def final_norm(self) -> nn.Module:
        return self.inner().norm

    def lm_head(self) -> nn.Module:
        return self.model.lm_head

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model.get_input_embeddings()(input_ids)

    # --- vision ------------------------------------------------------------------------
    def image_token_ids(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Normalised images (N, 3, H, W) -> their VQ codes as vocabulary ids (N, G_h·G_w), raster order."""
        with torch.no_grad():  # an argmin: nothing to differentiate
            return self.inner().get_image_tokens(pixel_values)

    def visual_features(self, pixel_values: torch.Tensor, image_grid_thw: torch.Tensor) -> list[torch.Tensor]:
        """``embed_tokens`` rows of each image's VQ ids: one (G_h·G_w, D) tensor per image."""
        return list(self.embed(self.image_token_ids(pixel_values)))

    def image_inputs(
        self, pixel_values: torch.Tensor, image_grid_thw: torch.Tensor
    ) -> tuple[list[torch.Tensor], torch.Tensor | None]:
        """:meth:`visual_features`; Chameleon's decoder takes nothing more at the image positions."""
        return self.visual_features(pixel_values, image_grid_thw), None

    def decoder_inputs(self, sources: VisualSources) -> dict[str, Any]:
        return {}

    def merged_grids(self, image_grid_thw: torch.Tensor) -> list[tuple[int, int]]:
        return [(int(h), int(w)) for _, h, w in image_grid_thw.tolist()]

    def prompt_positions(
        self,
        input_ids: torch.Tensor,
        mm_token_type_ids: torch.Tensor,
        image_grid_thw: torch.Tensor | None,
        attention_mask: torch.Tensor,
    ) -> torch.Tensor:
        """1-D positions counted over real tokens (left padding does not shift them), on all 3 axes."""
        pos = (attention_mask.long().cumsum(1) - 1).clamp(min=0)
        return pos[None].expand(3, -1, -1)

    def visible_box(self, image_hw: tuple[int, int]) -> tuple[int, int, int, int]:
        """The pixel box of an original (H, W) image the VQ grid covers (the processor's center crop)."""
        ip = self.processor.image_processor
        if not getattr(ip, "do_center_crop", False):
            return 0, 0, image_hw[0], image_hw[1]
        crop = (ip.crop_size["height"], ip.crop_size["width"])
        return visible_box(image_hw, ip.size["shortest_edge"], crop)

    def crop_size(self) -> tuple[int, int]:
        """The processor's input size: a crop is re-encoded at the image resolution (the same VQ grid)."""
        ip = self.processor.image_processor
        return ip.crop_size["height"], ip.crop_size["width"]

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1] -> what the image processor makes of the same uint8 pixels (rescale, normalise)."""
        ip = self.processor.image_processor
        x = images.float() * 255.0
        if ip.do_rescale:
            x = x * ip.rescale_factor
        if ip.do_normalize:
            mean = torch.tensor(ip.image_mean, device=x.device).view(1, -1, 1, 1)
            std = torch.tensor(ip.image_std, device=x.device).view(1, -1, 1, 1)
            x = (x - mean) / std
        return x

    def encode_crops(self, crops: torch.Tensor | list[torch.Tensor]) -> torch.Tensor:
        """Pixel crops in [0, 1] -> VQ codes -> their embeddings, mean-pooled (N, D).

        A (N, 3, H, W) tensor is resized (bilinear) to :meth:`crop_size`; a list may hold crops
        of different sizes, each a multiple of :attr:`patch_size` on both sides. Crops of one
        size go through the VQ-VAE in one call.
        """
        if isinstance(crops, torch.Tensor):
            crops = list(
                F.interpolate(crops.float(), size=self.crop_size(), mode="bilinear", align_corners=False)
            )
        f = self.patch_size
        groups: dict[tuple[int, int], list[int]] = {}
        for i, crop in enumerate(crops):
            if crop.shape[-2] % f or crop.shape[-1] % f:
                raise ValueError(f"crops[{i}]: size {tuple(crop.shape[-2:])} is not a multiple of {f}")
            groups.setdefault(tuple(crop.shape[-2:]), []).append(i)
        pooled: list[torch.Tensor | None] = [None] * len(crops)
        for idx in groups.values():
            pixels = self.normalize(torch.stack([crops[i] for i in idx])).to(self.dtype())
            feats = self.embed(self.image_token_ids(pixels)).mean(1)
            for j, i in enumerate(idx):
                pooled[i] = feats[j]
        return torch.stack(pooled)  # type: ignore[arg-type]

    def dtype(self) -> torch.dtype:
        return self.inner().vqmodel.dtype

    def vision_tower(self) -> nn.Module:
        return self.inner().vqmodel

    def suppressed_token_ids(self) -> list[int]:
        """The image placeholder, image start/end and every image-code id (HF's forward masks the codes too)."""
        codes = self.inner().vocabulary_mapping.image_tokens
        return [self.image_token_id, self.image_start_token_id, self.image_end_token_id, *codes]


def image_code_token(code: int) -> str:
    """The vocabulary name of VQ code ``code`` (``IMGIMG`` + its digits as letters A–J + ``Z``)."""
    return "IMGIMG" + "".join(chr(ord("A") + int(d)) for d in str(code)) + "Z"


def tiny_config(
    text: dict[str, Any], vocabulary_map: dict[str, int], image_size: int, codes: int, vq_levels: int
) -> ChameleonConfig:
    """A ChameleonConfig: the text decoder from ``text``, a small VQ-VAE (``codes`` codes, ``vq_levels``
    resolutions: a (image_size / 2^(levels−1))² grid) and the ``vocabulary_map`` of its tokenizer."""
    vq = dict(
        embed_dim=16,
        num_embeddings=codes,
        latent_channels=16,
        resolution=image_size,
        base_channels=32,
        channel_multiplier=[1] * vq_levels,
        num_res_blocks=1,
    )
    return ChameleonConfig(**text, vq_config=vq, vocabulary_map=vocabulary_map)


# --- the tiny random model (vedas.tiny_model) -----------------------------------------------------

TINY_SPECIAL = ["<image>", "<racm3:break>", "<eoss>"]
QWEN_IMAGE_SLOT = "<|vision_start|><|image_pad|><|vision_end|>"


def tiny_processor(
    tok: Any, chat_template: str, image_size: int, vq_codes: int, vq_levels: int, **_: Any
) -> Any:
    """The processor of :func:`vedas.tiny_model`: the Chameleon processor over ``tok`` (its special tokens and
    one ``IMGIMG…`` token per VQ code added) with ``chat_template``'s image slot as ``<image>``."""
    codes, levels = vq_codes, vq_levels
    side = image_size // 2 ** (levels - 1)
    if side * 2 ** (levels - 1) != image_size:
        raise ValueError(f"image_size={image_size} must divide by 2^(vq_levels-1) = {2 ** (levels - 1)}")
    tok.add_special_tokens(
        {"additional_special_tokens": TINY_SPECIAL + [image_code_token(i) for i in range(codes)]},
        replace_extra_special_tokens=False,
    )
    image_processor = ChameleonImageProcessorPil(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    )
    processor = PROCESSOR_CLASS(image_processor=image_processor, tokenizer=tok, image_seq_length=side * side)
    processor.chat_template = chat_template.replace(
        QWEN_IMAGE_SLOT, "<image>"
    )  # its __init__ takes no chat_template
    return processor


def tiny_model_config(
    text: dict[str, Any], tok: Any, image_size: int, vq_codes: int, vq_levels: int, **_: Any
) -> ChameleonConfig:
    """The config of :func:`vedas.tiny_model`: the text sizes ``text`` with plain RoPE, a small VQ-VAE."""
    text["rope_parameters"] = {"rope_type": "default", "rope_theta": 1e4}
    return tiny_config(text, dict(tok.get_vocab()), image_size, vq_codes, vq_levels)


ADAPTER = ChameleonBackbone
