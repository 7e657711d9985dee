"""The training config: one dataclass per section of a ``vedas train`` YAML, and :func:`load_config`.

    cfg = load_config("configs/synthetic_tiny.yaml", ["--optim.lr", "1e-4", "--routing.alpha", "16"])

Every field is typed, down to the nested sections (``routing`` is a
:class:`vedas.method.routing.RoutingConfig`, ``model.tiny`` is checked against the keyword sizes
of :func:`vedas.tiny_model`), so an unknown or mistyped field fails here, naming the dotted
field, before any data is read.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

from vedas.config import (
    ConfigError,
    LatentConfig,
    _check,
    _check_literal,
    apply_overrides,
    from_dict,
    keyword_args,
    load_yaml,
)
from vedas.method.curriculum import CurriculumConfig
from vedas.method.routing import RoutingConfig
from vedas.method.scfvr import SCFVRConfig
from vedas.methods import METHODS, Method, MethodName
from vedas.methods import method as method_of

LORA_ALL = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

TINY_SET_BY_RECIPE = ("arch", "seed", "bpe_corpus", "bpe_vocab")
"""Parameters of :func:`vedas.tiny_model` the recipe passes from other fields, so not ``model.tiny`` keys."""


@dataclass
class ModelConfig:
    """Which VLM to start from."""

    base: str = "tiny"
    """``tiny`` (a random model of the real architecture, offline) or a HF hub id / local directory."""
    arch: str = "qwen2_vl"
    """Architecture of the tiny model (ignored for a real checkpoint, whose config names it)."""
    tiny: dict[str, Any] = field(default_factory=dict)
    """Keyword sizes for :func:`vedas.tiny_model` (hidden, layers, heads, …), checked against its signature."""
    dtype: Literal["float32", "bfloat16"] = "float32"
    """Weight dtype when loading a real checkpoint (bf16 on GPU)."""
    bpe_vocab: int = 0
    """Tiny models only: 0 = byte-level tokenizer; N = a byte-level BPE of N tokens trained on the
    training records' text (deterministic, so every method of a comparison gets the same one)."""

    vision: Literal["train", "merger", "frozen"] = "train"
    """What of the vision tower trains in full fine-tuning: all of it, only the merger (the projector into
    the decoder, as LLaVA-style recipes do), or nothing. A random tiny tower trained at a from-scratch
    learning rate collapses to one constant direction and the decoder stops seeing the image."""

    def __post_init__(self) -> None:
        _check_literal(self, "dtype")
        _check_literal(self, "vision")
        _check(
            self.bpe_vocab == 0 or self.bpe_vocab >= 300,
            "bpe_vocab",
            f"must be 0 or ≥ 300, got {self.bpe_vocab}",
        )
        if (
            self.tiny
        ):  # importing the tiny model's module costs seconds: only when there is something to check
            from vedas.backbones.tiny import tiny_model

            self.tiny = keyword_args(tiny_model, self.tiny, "tiny", skip=TINY_SET_BY_RECIPE)


@dataclass
class DataConfig:
    """What to train on (any loader of :mod:`vedas.data`)."""

    name: str = "synthetic"
    """Dataset name (m3cot, scienceqa, gqa, onethinker, easyvqa, synthetic, …)."""
    path: str | None = None
    """Where the raw files are (the synthetic benchmark: the directory ``vedas data synth`` wrote)."""
    split: str = "train"
    limit: int | None = None
    """Use only the first N records."""
    skip_bad: bool = False
    """Skip (and count) bad rows instead of stopping: a corrupt or missing image, a missing field, and
    (methods other than ``no_cot``) a record without a rationale. Every skipped id is printed with its
    reason and listed in ``<output_dir>/skipped.json``."""
    answer_only: bool = False
    """Train a record without a rationale on its answer alone (no steps, no latents) instead of stopping
    the run, or, with ``skip_bad``, skipping it."""
    difficulty: str | None = None
    """GAP difficulty-aware supervision: a ``vedas data difficulty`` JSON. Only its all-fail questions
    get latent supervision (the configured latent method); the others train as plain CoT (0 latents,
    every step explicit) in the same batches. Needs method ``latent`` or ``vedas``."""


@dataclass
class LoraSettings:
    """LoRA through peft (the paper: r=64, α=16 on every projection)."""

    enabled: bool = False
    r: int = 64
    alpha: int = 16
    dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: list(LORA_ALL))

    def __post_init__(self) -> None:
        _check(self.r >= 1, "r", f"must be ≥ 1, got {self.r}")
        _check(0 <= self.dropout < 1, "dropout", f"must be in [0, 1), got {self.dropout}")


@dataclass
class OptimConfig:
    """AdamW with linear warm-up and cosine decay."""

    lr: float = 4e-5
    weight_decay: float = 0.0
    beta1: float = 0.9
    beta2: float = 0.999
    warmup_ratio: float = 0.03
    """Share of the optimizer steps spent warming up."""
    epochs: int = 16
    batch_size: int = 8
    """Samples per device per micro-batch."""
    grad_accum: int = 1
    """Micro-batches per optimizer step."""
    clip: float = 1.0
    """Gradient-norm clip (0 = off)."""
    gradient_checkpointing: bool = False
    """Recompute activations in backward instead of keeping them: every decoder layer (with the KV cache
    in the loop, :mod:`vedas.train.grad_checkpoint`) and the vision blocks that train. Same loss and
    gradients, less memory."""
    mixed_precision: Literal["no", "bf16"] = "no"
    """bf16 autocast (GPU); CPUs here gain nothing from it."""
    seed: int = 0

    def __post_init__(self) -> None:
        _check(self.lr > 0, "lr", f"must be > 0, got {self.lr}")
        _check(self.epochs >= 1, "epochs", f"must be ≥ 1, got {self.epochs}")
        _check(self.batch_size >= 1, "batch_size", f"must be ≥ 1, got {self.batch_size}")
        _check(self.grad_accum >= 1, "grad_accum", f"must be ≥ 1, got {self.grad_accum}")
        _check(0 <= self.warmup_ratio < 1, "warmup_ratio", f"must be in [0, 1), got {self.warmup_ratio}")
        _check(self.clip >= 0, "clip", f"must be ≥ 0, got {self.clip}")
        _check_literal(self, "mixed_precision")


@dataclass
class RunConfig:
    """Where results go and how often."""

    output_dir: str = "runs/train"
    save_every: int = 0
    """Checkpoint every N optimizer steps (0 = only at the end)."""
    log_every: int = 1
    """Write metrics every N optimizer steps."""
    resume: bool = False
    """Continue from the newest checkpoint in ``output_dir/checkpoints``; the fields that define the run
    (method, model, data, latent, …: :data:`vedas.train.output_dir.DEFINING`) must match its config."""
    overwrite: bool = False
    """Clear a non-empty ``output_dir`` before a fresh run (without it, a fresh run refuses to start there)."""
    keep_last: int = 0
    """Keep only the N newest checkpoints under ``output_dir/checkpoints`` (0 = keep all)."""
    max_steps: int = 0
    """Stop after this many optimizer steps (0 = run all epochs)."""
    deepspeed: str | None = None
    """A DeepSpeed JSON config (e.g. configs/deepspeed/zero2.json); needs the ``deepspeed`` extra."""
    fsdp: str | None = None
    """An FSDP2 settings file (e.g. configs/fsdp/decoder_layers.yaml): shard through accelerate's FSDP2,
    decoder layers as units (:mod:`vedas.train.fsdp`); launch under torchrun."""
    progress: bool = True
    grad_ratio: bool = False
    """On every logged step, also log ‖λ·∇L_recon‖ / ‖∇L_CE‖ over the decoder's trainable parameters
    (``grad_ratio``, with ``grad_ce`` and ``grad_recon``), measured on the step's last micro-batch by two
    extra backward passes (:func:`vedas.train.objective.grad_ratio`); the update is unchanged. Single
    process or DDP (this rank's micro-batch); not under DeepSpeed or FSDP, whose parameters are sharded."""

    def __post_init__(self) -> None:
        _check(self.keep_last >= 0, "keep_last", f"must be ≥ 0, got {self.keep_last}")
        _check(
            not (self.grad_ratio and (self.deepspeed or self.fsdp)),
            "grad_ratio",
            "measures unsharded decoder gradients: turn off run.deepspeed / run.fsdp, or run.grad_ratio",
        )
        _check(self.save_every >= 0, "save_every", f"must be ≥ 0, got {self.save_every}")
        _check(self.log_every >= 1, "log_every", f"must be ≥ 1, got {self.log_every}")
        _check(not (self.fsdp and self.deepspeed), "fsdp", "run.fsdp and run.deepspeed exclude each other")


@dataclass
class TrainConfig:
    """Everything ``vedas train`` reads; every field can be overridden as ``--section.field value``."""

    method: MethodName = "vedas"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    latent: LatentConfig = field(default_factory=LatentConfig)
    curriculum: CurriculumConfig = field(default_factory=CurriculumConfig)
    scfvr: SCFVRConfig = field(default_factory=SCFVRConfig)
    routing: RoutingConfig | None = None
    """Routing depth scaling settings (method ``vedas`` only); None = off."""
    lora: LoraSettings = field(default_factory=LoraSettings)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def __post_init__(self) -> None:
        _check(self.method in METHODS, "method", f"must be one of {list(METHODS)}, got {self.method!r}")
        _check(
            self.routing is None or isinstance(self.routing, RoutingConfig),
            "routing",
            f"must be a RoutingConfig or None, got {self.routing!r}",
        )
        _check(
            self.routing is None or method_of(self.method).routing,
            "routing",
            f"routing depth scaling belongs to method 'vedas', not {self.method!r}",
        )
        _check(
            self.scfvr.clip == "joint" or not self.run.deepspeed,
            "scfvr.clip",
            "'separate' clips in the recipe, but DeepSpeed clips all parameters together inside its step",
        )
        _check(
            self.data.difficulty is None or method_of(self.method).latent,
            "data.difficulty",
            f"difficulty-aware latent supervision needs method 'latent' or 'vedas', not {self.method!r}",
        )


def for_method(cfg: TrainConfig, preset: Method) -> TrainConfig:
    """``cfg`` set up to train ``preset`` (:data:`vedas.methods.PRESETS`): its mode as ``method`` and the
    fields it switches (:meth:`~vedas.methods.Method.train_fields`: replay, SCF-VR weight, routing)."""
    latent, scfvr, top = {}, {}, {"method": preset.mode}
    for key, value in preset.train_fields().items():
        section, _, name = key.rpartition(".")
        {"latent": latent, "scfvr": scfvr, "": top}[section][name] = value
    return dataclasses.replace(
        cfg,
        latent=dataclasses.replace(cfg.latent, **latent),
        scfvr=dataclasses.replace(cfg.scfvr, **scfvr),
        **top,
    )


def load_config(path: str | None, overrides: list[str]) -> TrainConfig:
    """The YAML at ``path`` (None: all defaults) with ``--section.field value`` overrides on top, validated."""
    data = load_yaml(path) if path else {}
    return from_dict(TrainConfig, apply_overrides(data, overrides))


__all__ = [
    "LORA_ALL",
    "ConfigError",
    "DataConfig",
    "LoraSettings",
    "ModelConfig",
    "OptimConfig",
    "RunConfig",
    "TrainConfig",
    "for_method",
    "load_config",
]
