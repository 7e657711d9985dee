"""How one pass of the latent loop is executed: the cached engine and the recompute oracle.

A :class:`Runner` takes the new tokens of one pass (embeddings, rope positions, padding
mask) and returns their final-norm hidden states and, when asked, a^t: the last query's
attention over every key so far, mean over layers and heads. It keeps whatever history
the next pass needs, can report its length, and can roll back to an earlier point
(:meth:`Runner.snapshot` / :meth:`Runner.restore`, through :meth:`LatentLoop.snapshot`).

- :class:`CachedRunner` appends each pass to a ``DynamicCache`` and records a^t with the
  registered last-query attention function (:mod:`vedas.engine.attention`): the fast path.
- :class:`RecomputeRunner` re-runs the whole prefix for every pass with no cache and reads
  a^t from ``output_attentions``, the way the reference code works. It is the test oracle
  and the baseline of the speed benchmark; its attention maps are computed in float32 from
  the same q and k as the recorder's row (:data:`vedas.engine.attention.ORACLE`).

    runner = make_runner("cached", vm.backbone)    # or "recompute", or "static" (vedas.engine.static)
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any, Protocol

import torch
from transformers import DynamicCache

from vedas.backbones.base import Backbone
from vedas.engine.attention import ORACLE, LastQueryRecorder, decoder_config_key
from vedas.engine.passes import decoder_pass, segment_ids, segments
from vedas.engine.sources import VisualSources


class Runner(Protocol):
    keep: str | None
    """What a recorded pass keeps beside the mean (:data:`vedas.engine.attention.KEEP`): None (the
    default), ``"layers"`` or ``"heads"``; set by the loop when its replay policy reads layers/heads."""
    rows: torch.Tensor | None
    """The last recorded pass's per-layer rows (B, layers[, H], L) when :attr:`keep` is set, else None."""

    def __call__(
        self,
        embeds: torch.Tensor,
        positions: torch.Tensor,
        new_mask: torch.Tensor,
        record: bool,
        implicit: bool = False,
        sources: VisualSources | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Run one pass over new tokens; returns (final-norm hidden (B, n, D), last-query attention (B, L) or None).

        ``implicit`` marks the prefill and latent chunks, the only passes routed layers may route.
        ``sources``: which of the new tokens are visual and made of which prompt visual tokens
        (None: none are); the decoder gets :meth:`Backbone.decoder_inputs` of it.
        """
        ...

    @property
    def length(self) -> int:
        """Positions run so far, padding included: the sequence length."""
        ...

    def snapshot(self) -> Any:
        """An opaque marker of the history so far, for :meth:`restore`."""
        ...

    def restore(self, state: Any) -> None:
        """Forget every pass run after ``state`` was taken."""
        ...


class CachedRunner:
    """Each pass sees only its new tokens; the history lives in the KV cache."""

    def __init__(self, backbone: Backbone) -> None:
        self.backbone = backbone
        self.decoder = backbone.decoder()
        self.cache = DynamicCache(config=backbone.model.config.get_text_config())
        self.mask: torch.Tensor | None = None
        self.keep: str | None = None
        self.rows: torch.Tensor | None = None

    def __call__(self, embeds, positions, new_mask, record, implicit=False, sources=None):
        extra = {} if sources is None else self.backbone.decoder_inputs(sources)
        new = new_mask.long()
        self.mask = new if self.mask is None else torch.cat([self.mask, new], 1)
        rec = LastQueryRecorder(self.keep) if record else contextlib.nullcontext()
        with rec, segments(segment_ids(new_mask, implicit, 0) if implicit else None):
            hidden = decoder_pass(self.decoder, embeds, self.mask, positions, self.cache, **extra)
        self.rows = rec.rows() if record and self.keep is not None else None
        return hidden, (rec.mean() if record else None)

    @property
    def length(self) -> int:
        return 0 if self.mask is None else self.mask.shape[1]

    def snapshot(self) -> tuple[torch.Tensor | None, int]:
        return self.mask, self.cache.get_seq_length()

    def restore(self, state: tuple[torch.Tensor | None, int]) -> None:
        """Crop the cache back to the snapshot; what is left is detached.

        The slices the crop leaves would still point into the graph of the passes just undone,
        so the restored prefix is a constant from here on (what rolling back for another
        attempt needs; a graph through the prefix is not kept).
        """
        self.mask, length = state
        extra = self.cache.get_seq_length() - length
        if extra:
            self.cache.crop(-extra)
            for layer in self.cache.layers:
                if layer.is_initialized:
                    layer.keys, layer.values = layer.keys.detach(), layer.values.detach()


@contextlib.contextmanager
def text_attention(model: Any, implementation: str) -> Iterator[None]:
    """Temporarily run the text decoder (only) with another attention implementation."""
    text_cfg = model.config.get_text_config()
    prev = text_cfg._attn_implementation
    key = decoder_config_key(model)
    model.set_attn_implementation({key: implementation})
    try:
        yield
    finally:
        model.set_attn_implementation({key: prev})


def eager_attention(model: Any) -> contextlib.AbstractContextManager[None]:
    """Temporarily run the text decoder with eager attention: maps in the model's dtype, every layer.

    What the reference approach costs (the benchmark's memory probe) and an independent
    check of the recorder in float32 (the tests).
    """
    return text_attention(model, "eager")


class RecomputeRunner:
    """Every pass re-runs the whole prefix without a cache; attention from ``output_attentions``."""

    attention: str = ORACLE
    """The text decoder's attention implementation while it runs (``"eager"`` gives the maps rounded to
    the model's dtype, as the reference code has them: ``benchmarks/real_width.py`` compares both)."""

    def __init__(self, backbone: Backbone) -> None:
        self.backbone = backbone
        self.model = backbone.model
        self.decoder = backbone.decoder()
        self.embeds: torch.Tensor | None = None
        self.positions: torch.Tensor | None = None
        self.mask: torch.Tensor | None = None
        self.segments: torch.Tensor | None = None
        self.sources: VisualSources | None = None
        self.passes = 0
        self.keep: str | None = None
        self.rows: torch.Tensor | None = None

    def __call__(self, embeds, positions, new_mask, record, implicit=False, sources=None):
        seg = segment_ids(new_mask, implicit, self.passes)
        self.passes += 1
        if sources is None:
            sources = VisualSources.none(embeds.shape[0], embeds.shape[1], embeds.device)
        if self.embeds is None:
            self.embeds, self.positions, self.mask, self.segments = embeds, positions, new_mask.long(), seg
            self.sources = sources
        else:
            assert self.sources is not None
            self.embeds = torch.cat([self.embeds, embeds], 1)
            self.positions = torch.cat([self.positions, positions], 2)
            self.mask = torch.cat([self.mask, new_mask.long()], 1)
            self.segments = torch.cat([self.segments, seg], 1)
            self.sources = self.sources.cat(sources)
        extra = self.backbone.decoder_inputs(self.sources)  # the same rows, over the whole prefix
        routed = self.segments if bool((self.segments >= 0).any()) else None
        with text_attention(self.model, self.attention), segments(routed):
            out = self.decoder(
                inputs_embeds=self.embeds,
                attention_mask=self.mask,
                position_ids=self.positions,
                use_cache=False,
                output_attentions=record,
                **extra,
            )
        attn, self.rows = None, None
        if record:
            rows = torch.stack([a[:, :, -1, :].float() for a in out.attentions])  # (layers, B, H, L)
            attn = rows.mean(dim=(0, 2))
            if self.keep == "layers":
                self.rows = rows.mean(2).transpose(0, 1)
            elif self.keep == "heads":
                self.rows = rows.transpose(0, 1)
        return out.last_hidden_state[:, -embeds.shape[1] :], attn

    @property
    def length(self) -> int:
        return 0 if self.mask is None else self.mask.shape[1]

    def snapshot(self) -> tuple[int, int]:
        return self.length, self.passes

    def restore(self, state: tuple[int, int]) -> None:
        """Truncate the stored prefix to the snapshot; the pass counter (segment ids) goes back too."""
        length, self.passes = state
        if length == 0:
            self.embeds = self.positions = self.mask = self.segments = self.sources = None
        elif self.embeds is not None:
            assert self.positions is not None and self.mask is not None and self.segments is not None
            assert self.sources is not None
            self.embeds, self.mask = self.embeds[:, :length], self.mask[:, :length]
            self.positions, self.segments = self.positions[:, :, :length], self.segments[:, :length]
            self.sources = self.sources.truncate(length)


RUNNERS = {"cached": CachedRunner, "recompute": RecomputeRunner}
ENGINES = ["cached", "recompute", "static"]
"""Every engine name; ``static`` (:mod:`vedas.engine.static`) preallocates its cache and compiles."""


def make_runner(engine: str, backbone: Backbone, reserve: int | None = None) -> Runner:
    """The runner of ``engine``; ``reserve``: the most positions the passes after the prefill add
    (the ``static`` engine allocates its cache for the prompt plus that; the others grow as they go)."""
    if engine == "static":
        from vedas.engine.static import StaticRunner

        if reserve is None:
            raise ValueError("engine='static' needs reserve: the positions to allocate beyond the prompt")
        return StaticRunner(backbone, reserve)
    if engine not in RUNNERS:
        raise ValueError(f"engine={engine!r}: choose one of {ENGINES}")
    return RUNNERS[engine](backbone)
