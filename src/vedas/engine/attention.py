"""The registered attention functions that produce a^(t): the recorder and the oracle's maps.

Visual replay needs a^(t), the attention of the *last* query position over every key,
averaged over heads and layers. The reference code gets it by switching the whole model to
eager attention with ``output_attentions=True``, which materialises every L×L map of every
layer. Here a registered attention function runs the stock kernel (SDPA, or flash
attention on GPU) unchanged and, only while a :class:`LastQueryRecorder` is active,
computes ``softmax(q_last · K^T · scale + mask_row)`` for the one row we need. Because the
function receives the keys *after* the KV-cache update, a cached latent step sees the whole
history (prompt, image, earlier replays and latents) at the cost of one extra row.

Usage::

    install_recorder(model)                      # once; decoder layers only
    with LastQueryRecorder() as rec:
        model(...)
    rec.mean()                                   # (B, L_keys), mean over layers and heads
    with LastQueryRecorder(keep="layers") as rec:  # opt-in: each layer's row as well
        model(...)
    rec.rows()                                   # (B, layers, L_keys); keep="heads": (B, layers, H, L_keys)

The recompute oracle (:class:`vedas.engine.runners.RecomputeRunner`) reads whole maps from
``output_attentions`` instead, through :data:`ORACLE`: the SDPA kernel for the outputs and,
when attentions are asked for, every query row's probabilities computed in float32 from the
same q and k by :func:`attention_probs`, the function that computes the recorder's row. Eager
attention would round q·Kᵀ and the probabilities to the model's dtype, so in bf16 the
oracle's replay choice drifted from the cached engine's at depth.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable
from typing import Any

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, flash_attention_mask, sdpa_mask

from vedas.backbones.base import oracle_maps_wanted

_ACTIVE: contextvars.ContextVar[LastQueryRecorder | None] = contextvars.ContextVar(
    "vedas_recorder", default=None
)


KEEP = (None, "layers", "heads")
"""What a recorder keeps beside the all-layer mean: nothing (the default), each layer's head-mean row,
or each layer's per-head rows (:attr:`LastQueryRecorder.keep`)."""


def check_keep(keep: str | None) -> None:
    if keep not in KEEP:
        raise ValueError(f"keep={keep!r}: choose one of {list(KEEP)}")


class LastQueryRecorder:
    """Accumulates the last query's attention probabilities while it is the active recorder.

    Each attention call adds its head-mean (B, L_keys) row; :meth:`mean` divides by the
    number of calls (layers). Rows of different key lengths in one recording are an error.

    ``keep="layers"`` also keeps each call's head-mean row, ``keep="heads"`` each call's per-head
    rows (:meth:`rows`), for a saliency that reads chosen layers or heads. The running total is
    computed the same way either way, so :meth:`mean` is bit-identical with and without keeping.
    """

    def __init__(self, keep: str | None = None) -> None:
        check_keep(keep)
        self.keep = keep
        self.total: torch.Tensor | None = None
        self.calls = 0
        self.kept: list[torch.Tensor] = []
        self._token: contextvars.Token | None = None

    def fresh(self) -> LastQueryRecorder:
        """An empty recorder with the same options (gradient checkpointing's recompute records again)."""
        return LastQueryRecorder(self.keep)

    def __enter__(self) -> LastQueryRecorder:
        self._token = _ACTIVE.set(self)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._token is not None
        _ACTIVE.reset(self._token)
        self._token = None

    def add(self, probs: torch.Tensor) -> None:
        row = probs.float().mean(1)  # (B, H, Lk) -> (B, Lk)
        if self.keep is not None:
            self.kept.append(row if self.keep == "layers" else probs.float())
        if self.total is None:
            self.total = row
        elif self.total.shape != row.shape:
            raise RuntimeError(
                f"attention rows of different shapes in one recording: {self.total.shape} vs {row.shape}"
            )
        else:
            self.total = self.total + row
        self.calls += 1

    def mean(self) -> torch.Tensor:
        if self.total is None:
            raise RuntimeError(
                "nothing was recorded: is the recorder installed on this model (install_recorder)?"
            )
        return self.total / self.calls

    def rows(self) -> torch.Tensor:
        """Each call's (layer's) row in call order: (B, layers, L_keys) with ``keep="layers"``,
        (B, layers, H, L_keys) with ``keep="heads"``."""
        if self.keep is None:
            raise RuntimeError("rows(): this recorder keeps only the mean (LastQueryRecorder(keep='layers'))")
        if not self.kept:
            self.mean()  # raises the not-installed error
        return torch.stack(self.kept, 1)


_PAUSED: contextvars.ContextVar[bool] = contextvars.ContextVar("vedas_recording_paused", default=False)


class paused:
    """Context manager that suspends recording, by either recorder (e.g. for extra passes that must not count).

    Only uncompiled code can pause (the routing refinement passes, which never run compiled).
    """

    def __enter__(self) -> None:
        self._token = _ACTIVE.set(None)
        self._paused = _PAUSED.set(True)

    def __exit__(self, *exc: object) -> None:
        _ACTIVE.reset(self._token)
        _PAUSED.reset(self._paused)


def attention_probs(
    query: torch.Tensor, key: torch.Tensor, attention_mask: torch.Tensor | None, scaling: float | None
) -> torch.Tensor:
    """softmax(q · Kᵀ · scale + mask) of the given query rows over all keys: (B, H, n, Lk), in float32.

    ``query`` (B, H, n, d) holds the *last* n query rows of the attention call (n = 1: the last
    query). Grouped-query heads are matched to their key head by a reshape, not ``repeat_kv``,
    so no copy of the keys is made. ``attention_mask`` may be a 4-D boolean or additive mask
    (SDPA/eager; its last n rows apply), a 2-D padding mask (flash attention), or None (no
    padding); the last two do not hold the causal pattern, so it is added here. A fully masked
    row (a padded query) comes out uniform, not NaN.
    """
    b, h, n, d = query.shape
    hk, lk = key.shape[1], key.shape[-2]
    q = query.float().reshape(b, hk, h // hk * n, d)  # (B, Hkv, G·n, d)
    scores = (q @ key.float().transpose(-1, -2)).reshape(b, h, n, lk)
    scores = scores * (scaling if scaling is not None else d**-0.5)
    if attention_mask is not None and attention_mask.dim() == 4:
        row = attention_mask[:, :, -n:, -lk:]
    else:
        keys = torch.arange(lk, device=query.device)
        row = (keys[None] <= torch.arange(lk - n, lk, device=query.device)[:, None])[None, None]
        if attention_mask is not None:  # (B, Lk) padding mask: 1 keep, 0 pad
            row = row & attention_mask[:, None, None, -lk:].bool()
    if row.dtype == torch.bool:
        scores = scores.masked_fill(~row, torch.finfo(torch.float32).min)
    else:
        scores = scores + row.float()
    return scores.softmax(-1)


def last_query_probs(
    query: torch.Tensor, key: torch.Tensor, attention_mask: torch.Tensor | None, scaling: float | None
) -> torch.Tensor:
    """softmax of the last query row over all keys: (B, H, Lk), computed in float32 (see :func:`attention_probs`)."""
    return attention_probs(query[:, :, -1:], key, attention_mask, scaling).squeeze(2)


class ModuleRecorder:
    """The recorder for compiled passes: the switch and each layer's row live on the attention modules.

    ``torch.compile`` cannot read a ``ContextVar`` (it breaks the graph at every layer), but it
    traces a plain attribute of a module: the switch ``vedas_record`` is a Python bool (the
    compiled pass is specialised on it) and each attention call stores its head-mean row in
    ``vedas_row``. The rows are the ones :class:`LastQueryRecorder` takes (same function, float32).

        with ModuleRecorder(attention_modules(layers), on=True) as rec:
            decoder(...)
        rec.mean()                                   # (B, L_keys)

    ``keep="layers"`` makes :meth:`rows` available (each layer's row is stored anyway); per-head rows
    (``keep="heads"``) are not kept on this path: the compiled pass stores head means only.
    """

    def __init__(self, modules: list[Any], on: bool, keep: str | None = None) -> None:
        check_keep(keep)
        if keep == "heads":
            raise ValueError(
                "keep='heads': the static engine's compiled recorder keeps head-mean rows only; "
                "per-head saliency (replay_heads) needs engine 'cached' or 'recompute'"
            )
        self.modules = modules
        self.on = on
        self.keep = keep
        self._rows: torch.Tensor | None = None

    def __enter__(self) -> ModuleRecorder:
        for m in self.modules:
            m.vedas_record, m.vedas_row = self.on, None
        return self

    def __exit__(self, *exc: object) -> None:
        for m in self.modules:
            m.vedas_record = False

    def mean(self) -> torch.Tensor:
        rows = [m.vedas_row for m in self.modules]
        for m in self.modules:
            m.vedas_row = None
        if any(r is None for r in rows):
            raise RuntimeError(
                "a decoder layer recorded no row: is the recorder installed on this model (install_recorder)?"
            )
        stacked = torch.stack(rows)
        if self.keep is not None:
            self._rows = stacked.transpose(0, 1)
        return stacked.mean(0)

    def rows(self) -> torch.Tensor:
        """Each layer's head-mean row, (B, layers, L_keys), of the pass :meth:`mean` read (call it first)."""
        if self._rows is None:
            raise RuntimeError("rows(): call mean() first, on a ModuleRecorder(keep='layers')")
        return self._rows


def attention_modules(layers: Any) -> list[Any]:
    """The self-attention module of each decoder layer (``layer.self_attn``, the Hugging Face layout)."""
    mods = [getattr(layer, "self_attn", None) for layer in layers]
    if any(m is None for m in mods):
        raise RuntimeError("a decoder layer has no .self_attn: the module recorder cannot find its attention")
    return mods


def _recording(base: Callable[..., Any]) -> Callable[..., Any]:
    def attention(module, query, key, value, attention_mask, scaling=None, **kwargs):
        out = base(module, query, key, value, attention_mask, scaling=scaling, **kwargs)
        if getattr(module, "vedas_record", False):  # ModuleRecorder: safe under torch.compile
            if not torch.compiler.is_compiling() and _PAUSED.get():
                return out
            module.vedas_row = last_query_probs(query, key, attention_mask, scaling).mean(1)
        elif not torch.compiler.is_compiling():
            rec = _ACTIVE.get()
            if rec is not None:
                # differentiable while training: the replay weights softmax(a_I) pass gradients back
                rec.add(last_query_probs(query, key, attention_mask, scaling))
        return out

    return attention


def _flash_forward(*args: Any, **kwargs: Any) -> Any:
    from transformers.integrations.flash_attention import flash_attention_forward

    return flash_attention_forward(*args, **kwargs)


# Our name for each base kernel: the recording function wraps the kernel, and the mask
# function is the base kernel's own (custom names get no mask otherwise).
RECORDING_IMPLEMENTATIONS: dict[str, tuple[str, Callable[..., Any], Callable[..., Any]]] = {
    "sdpa": ("vedas_sdpa", sdpa_attention_forward, sdpa_mask),
    "flash_attention_2": ("vedas_flash_attention_2", _flash_forward, flash_attention_mask),
}
for _base, (_name, _fn, _mask) in RECORDING_IMPLEMENTATIONS.items():
    AttentionInterface.register(_name, _recording(_fn))
    AttentionMaskInterface.register(_name, _mask)


ORACLE = "vedas_oracle"
"""The recompute oracle's attention implementation (see the module docstring)."""


def _oracle_attention(module, query, key, value, attention_mask, scaling=None, **kwargs):
    # popped: the SDPA wrapper warns that it cannot return attentions; we return our own
    want_maps = kwargs.pop("output_attentions", False) or oracle_maps_wanted()
    out, _ = sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, **kwargs)
    return out, (attention_probs(query, key, attention_mask, scaling) if want_maps else None)


AttentionInterface.register(ORACLE, _oracle_attention)
AttentionMaskInterface.register(ORACLE, sdpa_mask)


def decoder_config_key(model: Any) -> str:
    """The ``set_attn_implementation`` key of the text decoder's config: ``"text_config"`` for a
    model with one (the Qwen-VL family), ``""`` (the top config) where the decoder reads the top
    config itself (Chameleon; its VQ-VAE sub-config is left alone)."""
    return "text_config" if "text_config" in getattr(model.config, "sub_configs", {}) else ""


def install_recorder(model: Any, text_config_key: str | None = None) -> str:
    """Switch the decoder (only) to the recording variant of its current kernel; returns its name.

    Eager models get the sdpa-based recorder (the engine never runs eager attention: the
    recompute oracle has its own implementation, :data:`ORACLE`). ``text_config_key`` defaults
    to :func:`decoder_config_key` of the model.
    """
    if text_config_key is None:
        text_config_key = decoder_config_key(model)
    current = model.config.get_text_config()._attn_implementation or "sdpa"
    if current.startswith("vedas_"):
        return current
    base = current if current in RECORDING_IMPLEMENTATIONS else "sdpa"
    name = RECORDING_IMPLEMENTATIONS[base][0]
    model.set_attn_implementation({text_config_key: name})
    return name


def attention_implementation(model: Any) -> str:
    return model.config.get_text_config()._attn_implementation
