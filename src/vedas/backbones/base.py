"""The one small Protocol every backbone adapter implements.

The latent engine, visual replay, SCF-VR and routing talk to a VLM only through this
interface: where the visual tokens are and their grid (patch and merge size), the visual
input embeddings and their dtype, the 3-D positions of the prompt, the decoder layers and
final norm, any extra decoder inputs a pass needs at its visual positions, and re-encoding
pixel crops. Adding a backbone means adding one file that
implements it.
"""

from __future__ import annotations

import contextvars
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import torch
from torch import nn

if TYPE_CHECKING:
    from vedas.engine.sources import VisualSources


@runtime_checkable
class Backbone(Protocol):
    """What the engine needs from a vision-language model."""

    arch: str
    model: nn.Module  # the HF *ForConditionalGeneration
    processor: Any
    image_token_id: int
    patch_size: int
    """Side of one vision patch in pixels."""
    merge_size: int
    """Patches merged per side into one visual token: a token covers (patch_size × merge_size)² pixels."""

    def decoder(self) -> nn.Module:
        """The text decoder stack: called with inputs_embeds, (3, B, L) ``position_ids``, mask and cache;
        returns final-norm states. It has ``rotary_emb(x, positions)`` taking (3, B, n) positions too."""
        ...

    def decoder_layers(self) -> nn.ModuleList: ...

    def final_norm(self) -> nn.Module: ...

    def lm_head(self) -> nn.Module: ...

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Input embeddings of token ids (B, L) -> (B, L, D)."""
        ...

    def visual_features(self, pixel_values: torch.Tensor, image_grid_thw: torch.Tensor) -> list[torch.Tensor]:
        """Visual input embeddings after the merger, one (N_i, D) tensor per image, raster order."""
        ...

    def image_inputs(
        self, pixel_values: torch.Tensor, image_grid_thw: torch.Tensor
    ) -> tuple[list[torch.Tensor], torch.Tensor | None]:
        """One vision-tower call for a prompt: :meth:`visual_features`, and the per-layer rows the
        decoder also takes at the image positions, (S, N_total, D) in the same order (Qwen3-VL's
        DeepStack), or None where the architecture has none."""
        ...

    def decoder_inputs(self, sources: VisualSources) -> dict[str, Any]:
        """Extra keyword arguments of :meth:`decoder` for one pass, given its visual positions and
        their source tokens; ``{}`` where none are needed (docs/design.md#deepstack-replay)."""
        ...

    def merged_grids(self, image_grid_thw: torch.Tensor) -> list[tuple[int, int]]:
        """(G_h, G_w) of merged visual tokens per image."""
        ...

    def prompt_positions(
        self,
        input_ids: torch.Tensor,
        mm_token_type_ids: torch.Tensor,
        image_grid_thw: torch.Tensor | None,
        attention_mask: torch.Tensor,
    ) -> torch.Tensor:
        """The model's own rope positions of a (left-padded) prompt as (3, B, L).

        M-RoPE models (Qwen-VL) give their (t, h, w) rows; a 1-D rope model (Chameleon) repeats its
        position on all three rows, and its :meth:`decoder` takes the first row. The engine only ever
        builds positions of this shape (text positions: all three rows equal).
        """
        ...

    def visible_box(self, image_hw: tuple[int, int]) -> tuple[int, int, int, int]:
        """The (top, left, bottom, right) pixel box of an original (H, W) image that the processor's
        grid covers: the whole image where it resizes (Qwen-VL), the central square where it
        center-crops (Chameleon). SCF-VR maps windows into this box."""
        ...

    def encode_crops(self, crops: torch.Tensor | list[torch.Tensor]) -> torch.Tensor:
        """Re-encode pixel crops in [0, 1] with the vision tower; mean-pooled (N, D)."""
        ...

    def crop_size(self) -> tuple[int, int]:
        """(H, W) a (N, 3, H, W) batch of crops is resized to by :meth:`encode_crops`."""
        ...

    def dtype(self) -> torch.dtype:
        """The vision tower's dtype: what pixel values are cast to."""
        ...

    def vision_tower(self) -> nn.Module:
        """The image encoder's module (what ``model.vision`` freezes or trains): Qwen's ViT and merger,
        Chameleon's VQ-VAE (no gradient ever reaches it: its codes are an argmin)."""
        ...

    def suppressed_token_ids(self) -> list[int]:
        """Tokens greedy decoding must never emit (image/video placeholders, vision markers)."""
        ...


# The oracle attention (vedas.engine.attention.ORACLE) returns its maps inside this context even where
# a backbone's attention module drops ``output_attentions``; it lives here, not in the engine, because
# the backbone that needs it (Chameleon) sets it and the engine reads it.
_ORACLE_MAPS: contextvars.ContextVar[bool] = contextvars.ContextVar("vedas_oracle_maps", default=False)


class oracle_maps:
    """Context manager: the oracle returns its maps even where the attention module does not pass
    ``output_attentions`` down to the kernel (Chameleon's takes it as an argument and drops it)."""

    def __enter__(self) -> None:
        self._token = _ORACLE_MAPS.set(True)

    def __exit__(self, *exc: object) -> None:
        _ORACLE_MAPS.reset(self._token)


def oracle_maps_wanted() -> bool:
    return _ORACLE_MAPS.get()
