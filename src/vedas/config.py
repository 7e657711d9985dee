"""Typed configuration: dataclasses with a docstring per field, YAML in, CLI overrides on top.

Every setting is a field of a dataclass; :func:`from_dict` maps a (YAML) mapping onto it
and fails *before any work starts* on an unknown key or a value of the wrong type, naming
the dotted field. :func:`apply_overrides` takes ``--section.field value`` pairs from the
command line. Values that are valid types but invalid choices are rejected by each class's
``__post_init__``, again naming the field.
"""

from __future__ import annotations

import dataclasses
import inspect
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml

from vedas.errors import UserError

T = TypeVar("T")


class ConfigError(UserError):
    """A bad config value; the message names the dotted field."""


def _check(cond: bool, name: str, msg: str) -> None:
    if not cond:
        raise ConfigError(f"{name}: {msg}")


@dataclass
class LatentConfig:
    """How the latent loop runs; shared by training and inference."""

    latents: int = 4
    """T_r, the number of latent steps. Inference uses the count stored in the checkpoint."""
    replay_k: int = 32
    """K, visual tokens replayed per step (clipped to the unvisited tokens). 0 turns replay off."""
    replay_mode: Literal["topk", "soft_mix"] = "topk"
    """``topk``: the K weighted tokens; ``soft_mix``: their weighted sum as one token."""
    replay_scale: Literal["paper", "unit"] = "paper"
    """``paper``: weights softmax(a_I) (they sum to 1); ``unit``: weights × K so they average 1."""
    replay_select: Literal["attention", "random", "random_fixed"] = "attention"
    """Which unvisited tokens a step replays: the K most attended (the method), or K drawn uniformly
    at random among the unvisited ones (a control: same block weights softmax(a_I), only the choice
    differs; :func:`vedas.engine.replay.random_keys`). ``random`` draws fresh picks every training
    epoch (one generator for the run); ``random_fixed`` gives each training sample the same picks
    every epoch (seeded by its id). At inference both pick per sample (seeded by its id or prompt),
    so a sample's picks do not depend on the rest of its batch."""
    replay_seed: int = 0
    """Seed of the random selections: combined with each sample's key at inference and in
    ``random_fixed`` training; ``random`` training draws from one generator seeded with it."""
    replay_layers: list[int] | None = None
    """Saliency from these decoder layers' last-query attention (their mean; 0 = the first layer)
    instead of the mean over all layers; None keeps the paper's all-layer mean. The block weights
    stay softmax over the all-layer mean of the picked tokens (only the choice changes), as for
    every saliency option below (:class:`vedas.method.replay.SaliencyReplay`)."""
    replay_heads: list[int] | None = None
    """Saliency from these query heads only (of the chosen layers, or of all); None: every head.
    Needs engine ``cached`` or ``recompute`` (the static engine records head means only)."""
    replay_debias: Literal["none", "rowcol"] = "none"
    """``rowcol`` residualises each sample's saliency on its tokens' image row and column (the
    least-squares fit of row + column effects over the valid tokens is subtracted), so a purely
    positional trend gives no token a preference; ``none`` (the paper) ranks the raw attention."""
    replay_random_share: float = 0.0
    """ε: this share of each step's K picks (rounded) is drawn uniformly among the free tokens left
    after the saliency's picks, seeded per sample like ``replay_select: random`` (by id or prompt at
    inference; one generator for the run in training, so the draw is fresh every epoch)."""
    replay_diversity: float = 0.0
    """λ in [0, 1] of a greedy, DivPrune-like choice: each next pick maximises
    (1 − λ)·saliency/max + λ·(1 − max cosine similarity of its visual embedding to the step's earlier
    picks); a token whose embedding equals an earlier pick's is taken only when nothing else is left.
    0 (the paper) is plain top-K."""
    replay_positions: Literal["sequential", "original"] = "sequential"
    """Rope positions of replayed tokens: continue the text positions, or reuse their (t,h,w) source."""
    latent_grad: Literal["full", "none"] = "full"
    """Back-propagate through the latent chain (``full``) or detach each fed-back latent (``none``)."""
    max_new_tokens: int = 64
    """Greedy decoding stops at EOS or after this many tokens."""
    latent_norm: Literal["none", "ema"] = "none"
    """GAP norm calibration: ``ema`` rescales every fed-back latent to the EMA of the visual
    input-embedding L2 norm (the text one if no image was ever measured), in training and at
    inference. The EMA lives in the checkpoint extra ``latent_norm`` (:mod:`vedas.method.gap`), updated
    from each training batch's input embeddings or measured with ``vedas.method.gap.calibrate_norms``.
    Replayed tokens are not rescaled: ``replay_scale: unit`` keeps them at visual-token norm."""
    latent_head: Literal["none", "pca"] = "none"
    """GAP PCA latent head: ``pca`` feeds mean + coeffs · components instead of the hidden state,
    where a linear head predicts the coefficients of a PCA of the visual input embeddings (the
    checkpoint extra ``latent_head``). Applied before ``latent_norm``."""
    pca_variance: float = 0.95
    """Share of the visual embeddings' variance the PCA head's components keep (fit at training start)."""
    min_pixels: int | None = None
    """Images are resized by the model's own processor to between ``min_pixels`` and ``max_pixels``
    pixels (aspect kept, sides multiples of 28; small images are upsampled). None keeps the processor's
    own bound (Qwen2-VL: 56×56)."""
    max_pixels: int | None = None
    """The upper bound of that resize; None keeps the processor's own. The Qwen2-VL checkpoints ship
    12,845,056 (a 4000×3000 photo becomes ~15,300 visual tokens); 1003520 (28×28×1280) caps an image at
    1,280 visual tokens, bounding memory and time."""
    truncate_context: bool = False
    """A prompt over the model's context limit is an error naming the record; with this, the record's
    context field is cut at the end until the prompt fits (the question and options are never cut)."""

    def __post_init__(self) -> None:
        _check(
            isinstance(self.latents, int) and self.latents >= 0,
            "latents",
            f"must be an int ≥ 0, got {self.latents!r}",
        )
        _check(
            isinstance(self.replay_k, int) and self.replay_k >= 0,
            "replay_k",
            f"must be an int ≥ 0, got {self.replay_k!r}",
        )
        _check(self.max_new_tokens >= 1, "max_new_tokens", f"must be ≥ 1, got {self.max_new_tokens!r}")
        for name in ("min_pixels", "max_pixels"):
            value = getattr(self, name)
            _check(
                value is None or (isinstance(value, int) and value >= 28 * 28),
                name,
                f"must be None or an int ≥ 784 (one 28×28 merged patch), got {value!r}",
            )
        _check(
            self.min_pixels is None or self.max_pixels is None or self.min_pixels <= self.max_pixels,
            "min_pixels",
            f"must be ≤ max_pixels ({self.max_pixels}), got {self.min_pixels}",
        )
        _check(
            isinstance(self.pca_variance, (int, float)) and 0.0 < self.pca_variance <= 1.0,
            "pca_variance",
            f"must be a share in (0, 1], got {self.pca_variance!r}",
        )
        self._check_saliency()
        literals = (
            "replay_mode",
            "replay_debias",
            "replay_select",
            "replay_scale",
            "replay_positions",
            "latent_grad",
            "latent_norm",
            "latent_head",
        )
        for name in literals:
            _check_literal(self, name)
        _check(
            not (self.replay_positions == "original" and self.replay_mode == "soft_mix"),
            "replay_positions",
            "'original' needs replay_mode 'topk' (a soft mix has no single source position)",
        )

    def _check_saliency(self) -> None:
        for name in ("replay_layers", "replay_heads"):
            value = getattr(self, name)
            ok = value is None or (
                isinstance(value, list)
                and len(value) > 0
                and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value)
                and len(set(value)) == len(value)
            )
            _check(ok, name, f"must be None or a non-empty list of distinct ints ≥ 0, got {value!r}")
        for name in ("replay_random_share", "replay_diversity"):
            value = getattr(self, name)
            _check(
                isinstance(value, (int, float)) and not isinstance(value, bool) and 0.0 <= value <= 1.0,
                name,
                f"must be a number in [0, 1], got {value!r}",
            )
        options = [name for name in SALIENCY_FIELDS if getattr(self, name) != SALIENCY_DEFAULTS[name]]
        _check(
            not options or self.replay_select == "attention",
            options[0] if options else "replay_select",
            f"a saliency option refines the attention's choice; it needs replay_select 'attention', "
            f"got {self.replay_select!r}",
        )

    @property
    def saliency_options(self) -> dict[str, Any]:
        """The saliency fields set away from the paper's form (empty: the all-layer mean, top-K)."""
        return {n: getattr(self, n) for n in SALIENCY_FIELDS if getattr(self, n) != SALIENCY_DEFAULTS[n]}


SALIENCY_DEFAULTS: dict[str, Any] = {
    "replay_layers": None,
    "replay_heads": None,
    "replay_debias": "none",
    "replay_random_share": 0.0,
    "replay_diversity": 0.0,
}
"""The saliency fields of :class:`LatentConfig` and their defaults: the paper's all-layer mean, top-K."""
SALIENCY_FIELDS = tuple(SALIENCY_DEFAULTS)


def _check_literal(obj: Any, name: str) -> None:
    hint = typing.get_type_hints(type(obj))[name]
    allowed = typing.get_args(hint)
    value = getattr(obj, name)
    _check(value in allowed, name, f"must be one of {list(allowed)}, got {value!r}")


def _coerce_union(value: Any, hint: Any, name: str) -> Any:
    args = typing.get_args(hint)
    if value is None and type(None) in args:
        return None
    options = [a for a in args if a is not type(None)]
    if len(options) == 1:  # Optional[X]: X's own message is the useful one
        return _coerce(value, options[0], name)
    for a in options:
        try:
            return _coerce(value, a, name)
        except ConfigError:
            pass
    raise ConfigError(f"{name}: {value!r} fits none of {[getattr(a, '__name__', str(a)) for a in args]}")


def _coerce_literal(value: Any, hint: Any, name: str) -> Any:
    allowed = typing.get_args(hint)
    if value not in allowed:
        raise ConfigError(f"{name}: must be one of {list(allowed)}, got {value!r}")
    return value


def _coerce_list(value: Any, hint: Any, name: str) -> list[Any]:
    if not isinstance(value, (list, tuple)):
        raise ConfigError(f"{name}: expected a list, got {value!r}")
    args = typing.get_args(hint)
    inner = args[0] if args else Any
    return [_coerce(v, inner, f"{name}[{i}]") for i, v in enumerate(value)]


def _coerce_dict(value: Any, hint: Any, name: str) -> dict[Any, Any]:
    if not isinstance(value, dict):
        raise ConfigError(f"{name}: expected a mapping, got {value!r}")
    return dict(value)


def _coerce_bool(value: Any, name: str) -> bool:
    if isinstance(value, bool):
        return value
    raise ConfigError(f"{name}: expected true/false, got {value!r}")


def _coerce_int(value: Any, name: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise ConfigError(f"{name}: expected an integer, got {value!r}")


def _coerce_float(value: Any, name: str) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):  # YAML 1.1 reads "1e-5" (no dot) as a string
        try:
            return float(value)
        except ValueError:
            pass
    raise ConfigError(f"{name}: expected a number, got {value!r}")


def _coerce_str(value: Any, name: str) -> str:
    if isinstance(value, str):
        return value
    raise ConfigError(f"{name}: expected a string, got {value!r}")


_GENERIC = {
    typing.Union: _coerce_union,
    types.UnionType: _coerce_union,
    Literal: _coerce_literal,
    list: _coerce_list,
    tuple: _coerce_list,
    dict: _coerce_dict,
}
"""Coercion per kind of generic hint, by ``typing.get_origin``."""

_SCALAR = {bool: _coerce_bool, int: _coerce_int, float: _coerce_float, str: _coerce_str}


def _coerce(value: Any, hint: Any, name: str) -> Any:
    """``value`` as type ``hint`` (a dataclass, a generic or a scalar), or a ConfigError naming ``name``."""
    if hint is Any:
        return value
    generic = _GENERIC.get(typing.get_origin(hint))
    if generic is not None:
        return generic(value, hint, name)
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value, prefix=f"{name}.")  # type: ignore[arg-type]
    scalar = _SCALAR.get(hint)
    return value if scalar is None else scalar(value, name)


def keyword_args(
    fn: Callable[..., Any], data: dict[str, Any], name: str, skip: tuple[str, ...] = ()
) -> dict[str, Any]:
    """``data`` checked as keyword arguments of ``fn``: every key one of its parameters (not in ``skip``:
    those the caller passes itself), every value of that parameter's annotated type; errors name
    ``name.key``. For a config field that is passed on as ``**kwargs``, so a typo fails before any work."""
    if not isinstance(data, dict):
        raise ConfigError(f"{name}: expected a mapping, got {data!r}")
    valid = [p for p in inspect.signature(fn).parameters if p not in skip]
    hints = typing.get_type_hints(fn)
    for key in data:
        _check(key in valid, f"{name}.{key}", f"unknown key; valid keys: {sorted(valid)}")
    return {k: _coerce(v, hints.get(k, Any), f"{name}.{k}") for k, v in data.items()}


def from_dict(cls: type[T], data: dict[str, Any] | None, prefix: str = "") -> T:
    """Build dataclass ``cls`` from a mapping, rejecting unknown keys and wrong types by field name."""
    data = data or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or cls.__name__}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}  # type: ignore[arg-type]
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"unknown key(s) {[prefix + u for u in unknown]}; valid keys: {sorted(names)}")
    kwargs = {k: _coerce(v, hints[k], prefix + k) for k, v in data.items()}
    try:
        return cls(**kwargs)
    except ConfigError as e:
        raise ConfigError(f"{prefix}{e}") from None


def to_dict(obj: Any) -> dict[str, Any]:
    return dataclasses.asdict(obj)


def _parse_scalar(text: str) -> Any:
    return yaml.safe_load(text)


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``["--a.b", "1e-4", "--c=x", ...]`` onto a nested mapping (values parsed as YAML scalars)."""
    out = dict(data)
    i = 0
    while i < len(overrides):
        item = overrides[i]
        if not item.startswith("--"):
            raise ConfigError(f"override {item!r}: expected --section.field VALUE")
        key = item[2:]
        if "=" in key:
            key, raw = key.split("=", 1)
            i += 1
        else:
            if i + 1 >= len(overrides):
                raise ConfigError(f"override --{key}: missing value")
            raw = overrides[i + 1]
            i += 2
        node = out
        parts = key.replace("-", "_").split(".")
        for p in parts[:-1]:
            child = node.get(p)
            node[p] = dict(child) if isinstance(child, dict) else {}
            node = node[p]
        node[parts[-1]] = _parse_scalar(raw)
    return out


def yaml_problem(e: yaml.YAMLError) -> str:
    """A YAML error in one line: what is wrong and where (PyYAML's own message spans several)."""
    mark = getattr(e, "problem_mark", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    what = getattr(e, "problem", None) or str(e).splitlines()[0]
    context = getattr(e, "context", None)
    return f"{where}{what}" + (f" ({context})" if context else "")


class _StrictLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a key given twice in one mapping (PyYAML keeps the last silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *anchor` may repeat by design
                continue
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            try:
                first = seen.get(key)
            except TypeError:  # an unhashable key: PyYAML reports it itself below
                continue
            if first is not None:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (lines {first} and {line})", key_node.start_mark
                )
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


def strict_load(text: str) -> Any:
    """``yaml.safe_load``, but a key repeated in one mapping is a YAMLError naming it and both lines."""
    return yaml.load(text, Loader=_StrictLoader)  # a SafeLoader subclass: builds no arbitrary objects


def load_yaml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {p} does not exist")
    try:
        data = strict_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {p}: not valid YAML: {yaml_problem(e)}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {p}: top level must be a mapping")
    return data


__all__ = [
    "ConfigError",
    "LatentConfig",
    "apply_overrides",
    "field",
    "from_dict",
    "keyword_args",
    "load_yaml",
    "strict_load",
    "to_dict",
    "yaml_problem",
]
