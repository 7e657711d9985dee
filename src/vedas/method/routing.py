"""Routing Depth Scaling (RDS; the Vedas paper §3.3, Eqs. 10–12 and 15; docs/design.md#routing).

In each routed decoder layer, after the normal pass H⁰ = f(U), a router scores every token,
``s = sigmoid(router_l(H⁰))``; the top-α tokens T of each *segment* (below) go through the
same layer again, alone, D times:

    H^d_T = H^{d-1}_T + e^(d) ⊙ s_T ⊙ (f(H^{d-1}_T) − H^{d-1}_T),   other rows unchanged.

The refinement pass runs the subset in its original order with attention restricted to the
subset (causal), the subset's rope positions, no KV-cache writes, and the last-query
recorder paused. The step encodings e^(d) start at zero, so an installed but untrained
module leaves the model exactly as it was.

Usage::

    from vedas.method.routing import RoutingConfig, enable_routing
    rds = enable_routing(vm, RoutingConfig(alpha=32, layers="all"))   # installed and saved with vm.save
    vm.generate(images, questions)                                     # mode "vedas" routes
    vm.use_routing = False      # ablation: mode "vedas" without RDS (or rds.enabled = False)
    rds.remove()                # uninstall the hooks

Where routing happens. The engine marks each decoder forward's query tokens with a
*segment id* (:func:`segments`): tokens of one segment compete for the top-α slots and
attend to each other in the refinement pass; ``-1`` marks tokens that are never routed
(padding, and every token of the explicit phase — the ``<|latent_end|>`` token, teacher-
forced answers, greedy decoding). The cached engine has one segment per pass (the prefill,
then each latent chunk); the recompute oracle runs the whole sequence at once with one
segment per original pass, so both route the same tokens the same way. Routing needs all
three of: segments with an id ≥ 0, :func:`is_allowed` (``VedasModel.generate`` allows it
only in mode ``vedas`` with ``vm.use_routing``) and ``module.enabled``.

Decisions, where the paper is loose:

- *Residual form with zero-initialised e.* The literal Eq. 12, H^(D) = H⁰ + Σ_d H^(d) ⊙ e^(d),
  with Eq. 11 leaving unselected rows at H^(d-1), would add every untouched row to itself.
  We read Eqs. 11–12 as a gated residual update of the selected rows only; e = 0 makes the
  module an exact identity at initialisation, so a pretrained VLM starts unchanged. The
  router then learns through ``s`` once e moves away from zero (its gradient is exactly
  zero while e = 0).
- *Selection once per layer.* T and s come from H⁰; the D refinement steps reuse them.
- *α*: an int is a token count; a float in (0, 1] a fraction of the segment's routable
  tokens (rounded up, so a non-empty segment always routes ≥ 1 token). α larger than a
  segment routes all its routable tokens; padding is never selected.
- *Cosine schedule (Eq. 15).* As printed, α(l) = round(α_s + (α_s−α_e)/2·[1+cos(πl/L)])
  would go from 2α_s−α_e to α_s, contradicting the text ("decays from α_s = 64 to α_e = 16").
  We implement α(r) = α_e + (α_s−α_e)/2·[1+cos(π r/(R−1))] over the R routed layers
  r = 0..R−1: α_s at the first routed layer, α_e at the last.
- *Positions*: ``keep`` (default, the paper's better variant) gives the subset its
  original rope rows; ``rearrange`` gives it consecutive positions 0..n−1 (all three
  M-RoPE components equal). Rope attention depends only on position differences within
  the subset, so this is the same as "consecutive positions counted from the first
  selected token".
- *Layers*: ``odd``/``even`` count decoder layers from 0.
- *The last decoder layer refines only what is read.* Its output reaches nothing but the
  final norm, and the engine reads a routed pass there only at its last position, so only
  that position's segment is refined, and only when the router selects that position
  (:func:`read_rows`). The latents and tokens are those of refining every selected row
  (``rds.trim_last_layer = False``; the tests compare both); the saving, at most one routed
  layer's refinement work, is measured in ``benchmarks/rds.py`` (docs/rds.md).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from vedas import extras
from vedas.config import _check, _check_literal, from_dict, to_dict
from vedas.engine.attention import paused

# the pass context (segments, the allowed switch, which layers are hooked) is the engine's: its
# runners set it around each pass; routing reads it and re-exports it under its old names
from vedas.engine.passes import LAYER_HOOKS as _INSTALLED
from vedas.engine.passes import allowed, current_segments, is_allowed, segments

# --- configuration -------------------------------------------------------------------------


def _check_alpha(value: Any, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        _check(False, name, f"must be an int ≥ 1 or a float in (0, 1], got {value!r}")
    if isinstance(value, int):
        _check(value >= 1, name, f"a token count must be ≥ 1, got {value!r}")
    else:
        _check(0.0 < value <= 1.0, name, f"a fraction must be in (0, 1], got {value!r}")


@dataclass
class RoutingConfig:
    """Routing Depth Scaling settings (docs/design.md#routing). Stored in the checkpoint beside the router weights."""

    layers: str | list[int] = "all"
    """Routed decoder layers: ``all``, ``odd``, ``even`` (indices from 0) or a list of layer indices."""
    alpha: int | float = 32
    """Tokens refined per segment and layer (``fixed`` schedule): an int count or a float fraction in (0, 1]."""
    alpha_schedule: Literal["fixed", "cosine"] = "fixed"
    """``fixed``: ``alpha`` in every routed layer; ``cosine``: ``alpha_start`` → ``alpha_end`` over the routed layers."""
    alpha_start: int | float = 64
    """α at the first routed layer for the cosine schedule (the paper's α_s = 64)."""
    alpha_end: int | float = 16
    """α at the last routed layer for the cosine schedule (the paper's α_e = 16)."""
    depth: int = 1
    """D, refinement passes per routed layer (the paper caps it at 1)."""
    positions: Literal["keep", "rearrange"] = "keep"
    """Rope positions of the refined subset: its original ones, or consecutive 0..n−1."""

    def __post_init__(self) -> None:
        if isinstance(self.layers, str):
            _check(
                self.layers in ("all", "odd", "even"),
                "layers",
                f"must be 'all', 'odd', 'even' or a list of layer indices, got {self.layers!r}",
            )
        else:
            _check(
                isinstance(self.layers, (list, tuple))
                and len(self.layers) > 0
                and all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in self.layers),
                "layers",
                f"a list must hold layer indices ≥ 0, got {self.layers!r}",
            )
            _check(len(set(self.layers)) == len(self.layers), "layers", f"repeats an index: {self.layers!r}")
            self.layers = list(self.layers)
        for name in ("alpha", "alpha_start", "alpha_end"):
            _check_alpha(getattr(self, name), name)
        _check(
            isinstance(self.alpha_start, int) == isinstance(self.alpha_end, int),
            "alpha_end",
            f"must be the same kind as alpha_start (both counts or both fractions), "
            f"got {self.alpha_start!r} and {self.alpha_end!r}",
        )
        _check(
            isinstance(self.depth, int) and not isinstance(self.depth, bool) and self.depth >= 1,
            "depth",
            f"must be an int ≥ 1, got {self.depth!r}",
        )
        _check_literal(self, "alpha_schedule")
        _check_literal(self, "positions")

    def layer_indices(self, num_layers: int) -> list[int]:
        """The routed layer indices of a decoder with ``num_layers`` layers (sorted)."""
        if self.layers == "all":
            return list(range(num_layers))
        if self.layers in ("odd", "even"):
            return list(range(1 if self.layers == "odd" else 0, num_layers, 2))
        bad = [i for i in self.layers if i >= num_layers]
        _check(not bad, "layers", f"indices {bad} do not exist in a decoder of {num_layers} layers")
        return sorted(self.layers)

    def alphas(self, num_routed: int) -> list[int | float]:
        """α per routed layer, in order (see the module docstring for the cosine form)."""
        if self.alpha_schedule == "fixed":
            return [self.alpha] * num_routed
        a_s, a_e = self.alpha_start, self.alpha_end
        out: list[int | float] = []
        for r in range(num_routed):
            frac = r / (num_routed - 1) if num_routed > 1 else 0.0
            a = a_e + (a_s - a_e) / 2 * (1 + math.cos(math.pi * frac))
            out.append(max(1, math.floor(a + 0.5)) if isinstance(a_s, int) else a)
        return out


# --- token selection -----------------------------------------------------------------------


def select_tokens(scores: torch.Tensor, seg: torch.Tensor, alpha: int | float) -> torch.Tensor:
    """Top-α tokens by ``scores`` (B, L) within each segment of ``seg`` (B, L); returns a bool mask.

    Tokens with ``seg < 0`` are never selected. Ties go to the earlier position.
    """
    chosen = torch.zeros_like(seg, dtype=torch.bool)
    ids = torch.unique(seg[seg >= 0]).tolist()
    for g in ids:
        cand = seg == g
        n = cand.sum(1)
        if isinstance(alpha, int):
            k = n.clamp(max=alpha)
        else:
            k = torch.ceil(n.to(torch.float64) * alpha).long().clamp(max=n)
        masked = torch.where(cand, scores.float(), float("-inf"))
        rank = masked.argsort(dim=1, descending=True, stable=True).argsort(dim=1)
        chosen |= cand & (rank < k[:, None])
    return chosen


def read_rows(chosen: torch.Tensor, seg: torch.Tensor) -> torch.Tensor:
    """The rows of ``chosen`` (B, L) whose last-layer refinement can reach anything: a bool mask.

    The last decoder layer's output is read only through the final norm, and the engine reads a
    routed forward only at its last position (the next latent); the layer's KV cache comes from
    its input. That position's refinement attends to the selected rows of its own segment, so
    those stay, and only if the last position is itself selected; every other row is dropped.
    """
    return chosen & chosen[:, -1:] & (seg == seg[:, -1:])


def _subset_mask(seg_sub: torch.Tensor, valid: torch.Tensor, dtype: torch.dtype, kind: str) -> torch.Tensor:
    """The refinement pass's attention mask over the gathered subset (B, n), in the kernel's format.

    A query sees keys of its own segment that are not after it (the subset is in original
    order, so that is causal). Padded slots of the subset see only themselves, which keeps
    their softmax finite; their outputs are never written back.
    """
    if kind == "flash":
        if bool(((seg_sub != seg_sub[:, :1]) & valid).any()):
            raise NotImplementedError(
                "routing several segments in one forward needs a 4-D mask; flash attention takes only "
                "padding masks (the recompute oracle switches to SDPA, which does)"
            )
        return valid.long()
    pos = torch.arange(seg_sub.shape[1], device=seg_sub.device)
    causal = pos[:, None] >= pos[None, :]  # (bool ``tril`` is oddly slow on CPU for small sizes)
    ok = causal & (seg_sub[:, :, None] == seg_sub[:, None, :]) & valid[:, :, None] & valid[:, None, :]
    ok = ok | (pos[:, None] == pos[None, :])
    # an additive float mask: eager adds it to the scores and SDPA accepts it as is
    zero = torch.zeros((), dtype=dtype, device=seg_sub.device)
    return torch.where(ok, zero, torch.finfo(dtype).min)[:, None]


@contextlib.contextmanager
def _no_output_capture() -> Iterator[None]:
    """Hide refinement passes from HF's ``output_attentions``/``output_hidden_states`` collectors.

    transformers 5 records those outputs with forward hooks on the attention modules, which
    would also fire on our extra passes (the recompute oracle reads ``out.attentions``).
    The collector is a private context variable; without it there is nothing to hide.
    """
    try:
        from transformers.utils.output_capturing import _active_collector
    except ImportError:  # pragma: no cover - older/newer transformers without the collector
        yield
        return
    token = _active_collector.set(None)
    try:
        yield
    finally:
        _active_collector.reset(token)


# --- the module ----------------------------------------------------------------------------


def _backbone(target: Any) -> Any:
    return target.backbone if hasattr(target, "backbone") else target


class RoutingDepthScaling(nn.Module):
    """Routers and step encodings for the routed layers, and the forward hooks that apply them.

    Parameters (their state-dict keys are what ``routing.safetensors`` holds):
    ``routers.<l>`` a ``Linear(hidden, 1)`` per routed layer l, and ``step_encodings.<l>``
    a (D, hidden) tensor of e^(1..D), zero at initialisation. The backbone's own weights
    and state-dict keys are untouched: the hooks live on the decoder layers, not in them.
    """

    def __init__(self, hidden_size: int, num_layers: int, cfg: RoutingConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.layer_indices = cfg.layer_indices(num_layers)
        self.alpha = dict(zip(self.layer_indices, cfg.alphas(len(self.layer_indices))))
        self.routers = nn.ModuleDict({str(i): nn.Linear(hidden_size, 1) for i in self.layer_indices})
        self.step_encodings = nn.ParameterDict(
            {str(i): nn.Parameter(torch.zeros(cfg.depth, hidden_size)) for i in self.layer_indices}
        )
        self.enabled = True
        """Set False to run the hooked layers plainly (an ablation switch; ``vm.use_routing`` is the other)."""
        self.last_layer = num_layers - 1
        self.trim_last_layer = True
        """In the last decoder layer, refine only what is read (see :func:`read_rows`); False refines
        every selected row there too, which changes no latent, only the cost (``benchmarks/rds.py``)."""
        self._handles: list[Any] = []
        self._rotary: tuple[nn.Module, ...] = ()  # a tuple, so the backbone's module is not registered here

    # -- installation --
    def install(self, target: Any) -> RoutingDepthScaling:
        """Hook the routed layers of ``target`` (a VedasModel or a backbone adapter); returns self."""
        if self._handles:
            raise RuntimeError("this RoutingDepthScaling is already installed; call remove() first")
        bb = _backbone(target)
        layers = bb.decoder_layers()
        for i in self.layer_indices:
            if layers[i] in _INSTALLED:
                raise RuntimeError(f"decoder layer {i} already has routing installed; remove() it first")
        self._rotary = (bb.decoder().rotary_emb,)
        for i in self.layer_indices:
            layer = layers[i]
            # prepend: later hooks (e.g. HF's hidden-state capture) see the refined output
            handle = layer.register_forward_hook(self._hook(i), with_kwargs=True, prepend=True)
            self._handles.append(handle)
            _INSTALLED[layer] = self
        return self

    def remove(self) -> None:
        """Unhook every routed layer; the module keeps its weights and can be installed again."""
        for h in self._handles:
            h.remove()
        self._handles = []
        for layer in [k for k, v in list(_INSTALLED.items()) if v is self]:
            del _INSTALLED[layer]

    @property
    def installed(self) -> bool:
        return bool(self._handles)

    # -- the computation --
    def _hook(self, index: int):
        def hook(layer: nn.Module, args: tuple, kwargs: dict[str, Any], output: Any) -> Any:
            if not self.enabled or not is_allowed():
                return None
            seg = current_segments()
            if seg is None:
                return None
            h0 = output[0] if isinstance(output, tuple) else output
            if seg.shape != h0.shape[:2]:
                raise RuntimeError(
                    f"routing segments {tuple(seg.shape)} do not match layer {index}'s tokens {tuple(h0.shape[:2])}"
                )
            if not bool((seg >= 0).any()):
                return None
            pos_emb = kwargs.get("position_embeddings")
            if pos_emb is None:
                raise RuntimeError(
                    f"layer {index} was called without position_embeddings; routing needs them"
                )
            refined = self.refine(index, layer, h0, seg, pos_emb)
            return (refined, *output[1:]) if isinstance(output, tuple) else refined

        return hook

    def refine(
        self,
        index: int,
        layer: nn.Module,
        h0: torch.Tensor,
        seg: torch.Tensor,
        position_embeddings: tuple[torch.Tensor, torch.Tensor],
    ) -> torch.Tensor:
        """Apply RDS to layer ``index``'s output ``h0`` (B, L, D) given segment ids ``seg`` (B, L)."""
        router = self.routers[str(index)]
        scores = torch.sigmoid(router(h0.to(router.weight.dtype))).squeeze(-1)  # (B, L)
        chosen = select_tokens(scores.detach(), seg, self.alpha[index])
        if index == self.last_layer and self.trim_last_layer:
            chosen = read_rows(chosen, seg)
        count = chosen.sum(1)
        n = int(count.max())
        if n == 0:
            return h0
        # a stable sort brings each row's chosen positions first, in their original order
        idx = torch.sort((~chosen).to(torch.int8), dim=1, stable=True).indices[:, :n]  # (B, n)
        valid = torch.arange(n, device=h0.device)[None] < count[:, None]
        d_model = h0.shape[-1]
        rows = idx[..., None].expand(-1, -1, d_model)
        x0 = h0.gather(1, rows)
        s = scores.gather(1, idx)[..., None].to(h0.dtype)  # (B, n, 1)
        kind = "flash" if "flash" in str(layer.self_attn.config._attn_implementation) else "additive"
        mask = _subset_mask(seg.gather(1, idx), valid, h0.dtype, kind)
        cos, sin = (t.expand(h0.shape[0], -1, -1) for t in position_embeddings)  # batch-1 rope broadcasts
        if self.cfg.positions == "keep":
            head = idx[..., None].expand(-1, -1, cos.shape[-1])
            pos_emb = (cos.gather(1, head), sin.gather(1, head))
        else:
            ranks = torch.arange(n, device=h0.device)[None, None].expand(3, h0.shape[0], n)
            pos_emb = self._rotary[0](x0, ranks)
        steps = self.step_encodings[str(index)].to(h0.dtype)
        x = x0
        with paused(), _no_output_capture():
            for d in range(self.cfg.depth):
                fx = layer.forward(
                    x,
                    attention_mask=mask,
                    position_ids=None,
                    past_key_values=None,
                    use_cache=False,
                    position_embeddings=pos_emb,
                )
                fx = fx[0] if isinstance(fx, tuple) else fx
                x = x + steps[d] * s * (fx - x)
        # padded subset slots point at unchosen rows: writing their own values back leaves them unchanged
        x = torch.where(valid[..., None], x, x0)
        return h0.scatter(1, rows, x)


# --- wiring into a VedasModel --------------------------------------------------------------


def install(target: Any, cfg: RoutingConfig) -> RoutingDepthScaling:
    """Create a :class:`RoutingDepthScaling` for ``target`` (VedasModel or backbone) and hook it in.

    Its parameters take the decoder's device and dtype. Not recorded in any checkpoint: use
    :func:`enable_routing` for that.
    """
    bb = _backbone(target)
    text_cfg = bb.model.config.get_text_config()
    layers = bb.decoder_layers()
    ref = next(layers[0].parameters())
    module = RoutingDepthScaling(text_cfg.hidden_size, len(layers), cfg).to(
        device=ref.device, dtype=ref.dtype
    )
    return module.install(bb)


def enable_routing(vm: Any, cfg: RoutingConfig | None = None) -> RoutingDepthScaling:
    """Install RDS on ``vm`` and register it as the checkpoint extra ``routing`` (replacing an old one)."""
    cfg = cfg or RoutingConfig()
    old = vm.extras.pop("routing")
    if old is not None:
        old.remove()
    module = install(vm, cfg)
    vm.extras.add("routing", module, to_dict(cfg))
    return module


@extras.register("routing")
def _build(vm: Any, cfg: dict[str, Any]) -> nn.Module:
    """Checkpoint loading: re-create and install the module; the caller loads its weights."""
    return install(vm, from_dict(RoutingConfig, cfg))


def routing_module(vm: Any) -> RoutingDepthScaling | None:
    """The RDS module registered on ``vm``, if any."""
    return vm.extras.get("routing")


__all__ = [
    "RoutingConfig",
    "RoutingDepthScaling",
    "allowed",
    "current_segments",
    "enable_routing",
    "install",
    "is_allowed",
    "read_rows",
    "routing_module",
    "segments",
    "select_tokens",
]
