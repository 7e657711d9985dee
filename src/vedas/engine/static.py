"""The ``static`` engine: a preallocated KV cache and compiled decode and latent-chunk passes.

:class:`StaticRunner` is a :class:`~vedas.engine.runners.Runner` like the cached one, with
three differences, all for ``torch.compile`` (and CUDA graphs on a GPU):

- the KV cache is a ``StaticCache`` taken at the prefill (reused from an earlier call of the
  same shape when one is free: CUDA graphs are bound to its addresses), for the prompt plus
  the most positions the call can add (``reserve``: T_r chunks of ≤ K+1 tokens, the
  ``<|latent_end|>`` token and the answer), rounded up to :data:`LENGTH_BUCKET`
  (``CompileSettings.length_bucket``) so that batches of nearby lengths share a compiled graph;
- the padding mask is that full length from the start: zeros beyond what has been run,
  each pass writes its slots in place, and rolling back zeroes them again and moves the
  cache's write position back (the stale keys stay behind the mask);
- the last-query row is recorded by :class:`~vedas.engine.attention.ModuleRecorder`,
  which ``torch.compile`` can trace (a ``ContextVar`` breaks the graph).

The prefill (its length differs per batch) runs uncompiled; every later pass (latent
chunks, ``<|latent_end|>``, decoding) runs through one compiled function, specialised per
(batch, new tokens, cache length, recording) shape. A model with Routing Depth Scaling
installed (and enabled) runs the static cache uncompiled: routing selects a data-dependent
number of tokens and its hooks read a ``ContextVar``, both of which break the graph, in
every layer they hook and in every pass.

How it compiles is :class:`CompileSettings` (default: inductor, ``mode="reduce-overhead"``
(CUDA graphs) on CUDA, the default mode on CPU); :func:`compile_settings` changes it for the
enclosed calls, e.g. ``compile_settings(None)`` for the static cache alone (what most tests use)::

    vm.generate(images, questions, engine="static")
    with compile_settings(CompileSettings(backend="aot_eager")):
        vm.generate(images, questions, engine="static")

Not supported (a clear error): autograd (training, test-time optimisation: the cache is
written in place) and ``flash_attention_2`` (run the ``sdpa`` kernel with this engine).
"""

from __future__ import annotations

import contextlib
import contextvars
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from transformers import StaticCache

from vedas.backbones.base import Backbone
from vedas.engine.attention import ModuleRecorder, attention_implementation, attention_modules
from vedas.engine.passes import decoder_pass, hooked, segment_ids, segments

LENGTH_BUCKET = 64
"""The static cache's length is rounded up to a multiple of this (fewer distinct compiled shapes)."""

RECOMPILE_LIMIT = 64
"""Compiled variants of the pass kept before dynamo falls back to running it uncompiled. One pass
function serves every model and shape (batch size, new tokens, cache length, recording), so
dynamo's default of 8 is soon reached (set while a compiled pass runs, not process-wide)."""


@dataclass(frozen=True)
class CompileSettings:
    """How :class:`StaticRunner` compiles its passes (``torch.compile`` arguments)."""

    backend: str = "inductor"
    mode: str | None = None
    """None: ``reduce-overhead`` (CUDA graphs) on CUDA, the default mode elsewhere."""
    length_bucket: int = LENGTH_BUCKET
    """The cache length is rounded up to a multiple of this; every distinct length is another set of
    compiled graphs, so a larger bucket (e.g. 512) lets modes with different reserves share them."""

    def mode_for(self, device: torch.device) -> str | None:
        if self.mode is not None:
            return self.mode
        return "reduce-overhead" if device.type == "cuda" and self.backend == "inductor" else None


_SETTINGS: contextvars.ContextVar[CompileSettings | None] = contextvars.ContextVar(
    "vedas_static_compile",
    default=CompileSettings(),  # noqa: B039 (frozen: immutable)
)


@contextlib.contextmanager
def compile_settings(settings: CompileSettings | None) -> Iterator[None]:
    """Use ``settings`` for the static engine within the block; None runs the static cache uncompiled."""
    token = _SETTINGS.set(settings)
    try:
        yield
    finally:
        _SETTINGS.reset(token)


# one compiled pass per (decoder, settings): every generate call on that model reuses its graphs
_COMPILED: weakref.WeakKeyDictionary[Any, dict[CompileSettings, Callable[..., Any]]] = (
    weakref.WeakKeyDictionary()
)


def compiled_pass(decoder: Any, settings: CompileSettings, device: torch.device) -> Callable[..., Any]:
    per_decoder = _COMPILED.setdefault(decoder, {})
    if settings not in per_decoder:
        per_decoder[settings] = torch.compile(
            decoder_pass, backend=settings.backend, mode=settings.mode_for(device), dynamic=False
        )
    return per_decoder[settings]


POOL_SIZE = 4
"""Static caches kept per model for reuse (most recent shapes)."""

# a finished call's cache, reused by the next call of the same (batch, length, dtype, device): CUDA
# graphs are recorded against the cache tensors' addresses, so a new cache per call would make
# every call record them again. An entry whose runner is still alive is never handed out twice.
_POOL: weakref.WeakKeyDictionary[Any, dict[tuple[Any, ...], tuple[StaticCache, weakref.ref]]] = (
    weakref.WeakKeyDictionary()
)


def _pooled_cache(runner: StaticRunner, key: tuple[Any, ...], max_len: int) -> StaticCache:
    pool = _POOL.setdefault(runner.decoder, {})
    entry = pool.pop(key, None)
    if entry is not None and entry[1]() is None:  # its runner is gone: reuse it
        cache = entry[0]
        cache.reset()
    else:
        cache = StaticCache(config=runner.backbone.model.config.get_text_config(), max_cache_len=max_len)
    pool[key] = (cache, weakref.ref(runner))
    while len(pool) > POOL_SIZE:
        pool.pop(next(iter(pool)))
    return cache


def _routing_installed(backbone: Backbone) -> bool:
    """Whether an enabled Routing Depth Scaling module hooks one of the decoder layers."""
    return any(hooked(layer) for layer in backbone.decoder_layers())


class StaticRunner:
    """The cached runner's passes over a preallocated cache, compiled after the prefill (module docstring)."""

    def __init__(self, backbone: Backbone, reserve: int) -> None:
        impl = attention_implementation(backbone.model) or "sdpa"
        if "flash" in impl:
            raise ValueError(
                f"engine='static': the decoder runs {impl!r}; the static cache needs the sdpa kernel "
                "(load the model with attn_implementation='sdpa', or use engine='cached')"
            )
        self.backbone = backbone
        self.decoder = backbone.decoder()
        self.attn = attention_modules(backbone.decoder_layers())
        self.reserve = reserve
        # None: the static cache alone (asked for, or routing installed: see the module docstring)
        self.settings = None if _routing_installed(backbone) else _SETTINGS.get()
        self.cache: StaticCache | None = None
        self.mask: torch.Tensor | None = None  # (B, max_len), zeros beyond self._length
        self._length = 0
        self.keep: str | None = None
        self.rows: torch.Tensor | None = None

    def _allocate(self, embeds: torch.Tensor) -> None:
        need = embeds.shape[1] + self.reserve
        bucket = LENGTH_BUCKET if self.settings is None else self.settings.length_bucket
        max_len = -(-need // bucket) * bucket
        key = (embeds.shape[0], max_len, embeds.dtype, embeds.device)
        self.cache = _pooled_cache(self, key, max_len)
        self.mask = torch.zeros(embeds.shape[0], max_len, dtype=torch.long, device=embeds.device)

    def __call__(self, embeds, positions, new_mask, record, implicit=False, sources=None):
        if torch.is_grad_enabled():
            raise RuntimeError(
                "engine='static' is inference only (its cache is written in place, no autograd): "
                "use engine='cached' for training and test-time optimisation"
            )
        first = self.cache is None
        if first:
            self._allocate(embeds)
        assert self.mask is not None
        n = embeds.shape[1]
        end = self._length + n
        if end > self.mask.shape[1]:
            raise RuntimeError(
                f"engine='static': {end} positions exceed the cache of {self.mask.shape[1]} allocated at the "
                f"prefill (prompt + reserve={self.reserve})"
            )
        self.mask[:, self._length : end] = new_mask.long()
        seg = segment_ids(new_mask, implicit, 0) if implicit else None
        extra = {} if sources is None else self.backbone.decoder_inputs(sources)
        run = decoder_pass
        if not first and self.settings is not None:
            run = compiled_pass(self.decoder, self.settings, embeds.device)
            if embeds.device.type == "cuda":
                torch.compiler.cudagraph_mark_step_begin()
        with (
            ModuleRecorder(self.attn, on=record, keep=self.keep) as rec,
            segments(seg),
            torch._dynamo.config.patch(recompile_limit=RECOMPILE_LIMIT),
        ):
            hidden = run(self.decoder, embeds, self.mask, positions, self.cache, **extra)
        self._length = end
        # clone: a CUDA-graph output is overwritten by the graph's next replay
        attn = rec.mean()[:, :end].clone() if record else None
        self.rows = rec.rows()[..., :end].clone() if record and self.keep is not None else None
        return hidden.clone(), attn

    @property
    def length(self) -> int:
        return self._length

    def snapshot(self) -> int:
        return self._length

    def restore(self, state: int) -> None:
        """Move the write position back to ``state`` and mask what came after (the keys stay, unread)."""
        if self.mask is None or state == self._length:
            return
        self.mask[:, state:] = 0
        assert self.cache is not None
        for layer in self.cache.layers:
            if layer.is_initialized:
                layer.cumulative_length.fill_(state)
        self._length = state
