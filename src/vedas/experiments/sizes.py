"""The sizes and recipes the product's experiment commands share: ``vedas demo`` (:mod:`.demo`) and its
ablation (:mod:`.ablation`) train the same tiny models on the same synthetic benchmark, so both read
them here (neither imports the other's internals).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vedas.data.synth import PRESETS


@dataclass
class DemoSize:
    """Everything the demo's size depends on."""

    train: int
    test: int
    epochs: int
    latents: int
    tiny: dict[str, Any] = field(default_factory=dict)
    batch_size: int = 16
    lr: float = 2e-3
    replay_k: int = 2
    """K; :meth:`with_preset` sets it from :data:`PRESET_REPLAY_K` (``fine``: 2, so T_r·K = 8 of 36 tokens)."""
    bpe_vocab: int = 512
    routing: dict[str, Any] = field(default_factory=lambda: {"layers": "all", "alpha": 8, "depth": 1})
    """Routing depth scaling for method ``vedas`` (α tokens of each pass get a second layer pass)."""
    preset: str = "fine"
    """The synthetic benchmark's preset (:data:`vedas.data.synth.PRESETS`): ``fine`` (168 px, 36 merged
    visual tokens, replay must choose, 3-4-step questions; the default) or ``easy`` (112 px, 16 tokens,
    all replayed; every method but ``no_cot`` at 100 %), docs/results.md#fine-preset; or ``far`` (the 36 tokens
    ~170 text tokens before the question, images rendered at 3× the prompt's side: docs/design.md#far-preset) or
    ``long`` (``fine``'s image with ``far``'s ~170 text tokens before the question: docs/design.md#long-preset) or
    ``detail`` (``far``'s textures framed on larger squares, no context, a wider tower: docs/design.md#detail-preset)."""
    synth: dict[str, Any] = field(default_factory=dict)
    """Knobs on top of the preset (:class:`vedas.data.synth.SynthConfig`)."""

    def synth_config(self) -> Any:
        from vedas.data.synth import preset

        return preset(self.preset, **self.synth)

    def with_preset(self, name: str) -> DemoSize:
        """This size on preset ``name`` (the pixel bound follows its image side in :meth:`tiny_model_args`)."""
        if name not in PRESETS:
            raise ValueError(f"preset={name!r}: choose one of {sorted(PRESETS)}")
        tiny = {**self.tiny, **PRESET_TINY.get(name, {})}
        return dataclasses.replace(self, preset=name, replay_k=PRESET_REPLAY_K[name], tiny=tiny)

    max_new_tokens: int = 160
    """Generation cap: `cot`'s answer comes after ~80-120 tokens (a smoke test may cut it short)."""
    latent_epochs: int = 6
    """Epochs of ``latent`` and ``vedas`` when they start from the trained ``cot`` checkpoint (curriculum
    stage 0 is explicit CoT, as in Coconut and the paper): stage 0, then one stage per epoch to T_r."""
    vision: str = "merger"
    """What of the vision tower trains (``model.vision``): the merger only, so the tower keeps its features."""
    arch: str = "qwen2_vl"
    """The tiny model's architecture; Qwen-VL images are resized to the merged grid they have at patch 14
    (:func:`demo_pixels`: 4 × 4 tokens on the easy preset), so every Qwen architecture sees the same
    number of visual tokens per image."""
    vision_seed: int | None = None
    """The random vision tower's own seed (``tiny_model(vision_seed=...)``), or None: drawn with the
    run's seed. The ablation fixes it, so its seeds vary data, tokenizer and initialisation but not
    the tower."""

    def tiny_model_args(self) -> dict[str, Any]:
        """``tiny_model`` arguments: :attr:`tiny` for Qwen-VL (pixel bound from :func:`demo_pixels`); for
        Chameleon its text sizes and 64-px images (an 8×8 VQ grid: 64 visual tokens; its VQ-VAE never
        trains, there is no merger)."""
        tower = {} if self.vision_seed is None else {"vision_seed": self.vision_seed}
        if self.arch != "chameleon":
            return {
                **self.tiny,
                "max_pixels": demo_pixels(self.arch, self.synth_config().input_side),
                **tower,
            }
        text = ("hidden", "layers", "heads", "kv_heads")
        return {**{k: self.tiny[k] for k in text if k in self.tiny}, "image_size": CHAMELEON_IMAGE, **tower}


CHAMELEON_IMAGE = 64
PRESET_REPLAY_K = {"easy": 4, "fine": 2, "far": 2, "long": 2, "detail": 2}
"""K per preset: ``fine``'s 36 visual tokens take T_r·K = 4·2 = 8 replays, under a quarter; ``easy`` keeps the
K = 4 it was measured with (its 16 tokens are all replayed); ``far`` and ``long`` have ``fine``'s 36 tokens in
the prompt."""
PRESET_TINY: dict[str, dict[str, Any]] = {"detail": {"vision_hidden": 256}}
"""Tiny-model arguments a preset sets on top of the size (``--tiny`` overrides them): ``detail``'s kinds differ
only in a texture that the demo's 64-wide random tower reads on some seeds; at 256 its ``cot`` reads them on
each seed tried (docs/design.md#detail-preset)."""
DEFAULT_JOBS = 2 if (os.cpu_count() or 1) >= 2 else 1


# A tiny random model trained for minutes must first learn to see and read. Measured on this
# benchmark (docs in README): with kinds to copy from the question and shuffled options, trained
# `cot` ignored both (the same text for any colour or options) and every method sat at chance; and
# a vision tower trained at this learning rate collapsed to one constant direction (feature
# spread 0.41 -> 0.08). So the demo asks one question whose reading is trivial — "What is the
# difference between the number of red squares and the number of blue squares?", options 0-3 in
# order — over clean one-colour squares, trains only the vision merger (`model.vision: merger`),
# and leaves counting twice and subtracting as the work. `cot` writes it out in 4 verbose steps
# (count, count, subtract, match the option; 71.6 BPE tokens): with the terse one-sentence steps
# (27.4 tokens) `cot` took 35.4 AR steps against latent's 12, under the 5x the demo must show.
# Epochs: trained `cot` breaks through late — its loss sits on a plateau and then drops, at
# steps ~900-1100 (batch 16) for seed 0, terse or verbose. Side runs (terse): 10 epochs (1000
# steps) 22.5 %, 12 epochs 56.0 %, 14 epochs 100 %; batch 8 for 10 epochs stayed at 24 %. With
# the verbose rationale and 14 epochs seed 2 never broke through (22.8 %; lr 4e-3 did not help
# either); with 20 epochs (the linear decay keeps lr higher for longer) it did, at step ~850.
# `cot`'s answer comes after ~80 tokens, so generation may run to 160 (64 cut it off: 8 %).
DEMO_SYNTH = PRESETS["easy"]
"""The earlier demo's benchmark (``--preset easy``): kept for the measurements made on it."""
FULL = DemoSize(
    train=1600,
    test=400,
    epochs=20,
    latents=4,
    tiny=dict(
        hidden=128, layers=4, heads=4, kv_heads=2, vision_depth=2, vision_hidden=64
    ),  # max_pixels: from the preset's image side (DemoSize.tiny_model_args)
)
QUICK = DemoSize(
    train=256,
    test=64,
    epochs=4,
    latents=2,
    latent_epochs=3,
    tiny=dict(hidden=64, layers=2, heads=4, kv_heads=2, vision_depth=1, vision_hidden=32),
)


def add_jobs(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--jobs",
        type=int,
        default=DEFAULT_JOBS,
        help="train this many methods at once, one process each with an equal share of the threads "
        "(no_cot beside cot, then latent beside vedas, then each evaluated on the idle machine; with "
        "--ablation, whole units side by side, so their latencies are measured under load); 1: everything "
        "in this process "
        f"(default: 2 on a machine of 2 or more cores, else 1; here {DEFAULT_JOBS})",
    )


def add_preset(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--preset",
        default="fine",
        choices=sorted(PRESETS),
        help="synthetic benchmark: fine (168 px, 36 visual tokens of which replay shows 8, 3-4-step "
        "questions), easy (112 px, 16 visual tokens, all replayed; the earlier demo) or far (fine's 36 "
        "tokens ~170 text tokens before the question, textures seen finely only in a crop; cot fails on "
        "it) or long (fine's image, far's ~170 text tokens before the question) or detail (far's textures inside "
        "a solid frame on larger squares, no context, a 256-wide random tower: SCF-VR's crop shows the kinds 2x "
        "stronger than the prompt) (default: fine)",
    )
    parser.add_argument(
        "--synth",
        nargs="+",
        default=[],
        metavar="KNOB=VALUE",
        help="benchmark knobs on top of the preset, each a `vedas data synth` flag without its dashes "
        "(e.g. --synth context_sentences=0 texture=4); recorded in the run's settings",
    )
    parser.add_argument(
        "--tiny",
        nargs="+",
        default=[],
        metavar="KNOB=VALUE",
        help="tiny-model knobs on top of the size, each a `vedas.tiny_model` argument (e.g. --tiny "
        "vision_hidden=256: a wider random vision tower); recorded in the run's settings",
    )


def sized(args: argparse.Namespace) -> DemoSize:
    """The demo size the arguments ask for: quick or full, on the preset and architecture, with the overrides."""
    size = (QUICK if args.quick else FULL).with_preset(args.preset)
    given = (
        ("train", args.train),
        ("test", args.test),
        ("epochs", args.epochs),
        ("latent_epochs", args.latent_epochs),
        ("max_new_tokens", args.max_new_tokens),
    )
    synth = {**size.synth, **synth_knobs(args.synth)}
    tiny = {**size.tiny, **tiny_knobs(args.tiny)}
    return dataclasses.replace(size, arch=args.arch, synth=synth, tiny=tiny, **{k: v for k, v in given if v})


def knobs(flag: str, items: list[str], fn: Any, skip: tuple[str, ...] = ()) -> dict[str, Any]:
    """``FLAG KNOB=VALUE …`` as keyword arguments of ``fn`` (a function or a dataclass): each value read as a
    YAML scalar and checked against the parameter's type as a config file's would be; a UserError names a
    malformed item, an unknown knob (those in ``skip`` too) or a value of the wrong type."""
    from vedas.config import apply_overrides, keyword_args
    from vedas.errors import UserError

    malformed = [item for item in items if "=" not in item]
    if malformed:
        raise UserError(f"{flag}: {malformed[0]!r} is not KNOB=VALUE")
    return keyword_args(fn, apply_overrides({}, [f"--{item}" for item in items]), flag, skip=skip)


def synth_knobs(items: list[str]) -> dict[str, Any]:
    """``--synth KNOB=VALUE …`` as :class:`~vedas.data.synth.SynthConfig` fields (:func:`knobs`)."""
    from vedas.data.synth import SynthConfig

    return knobs("--synth", items, SynthConfig)


TINY_SET_BY_SIZE = ("arch", "max_pixels", "vision_seed", "bpe_corpus", "seed")
"""``tiny_model`` arguments the demo sets itself (from ``--arch``, the preset, ``--vision-seed``, the data and
the seed), so ``--tiny`` cannot."""


def tiny_knobs(items: list[str]) -> dict[str, Any]:
    """``--tiny KNOB=VALUE …`` as ``tiny_model`` keyword arguments (:func:`knobs`), none the demo sets itself."""
    from vedas.backbones.tiny import tiny_model

    return knobs("--tiny", items, tiny_model, skip=TINY_SET_BY_SIZE)


def demo_pixels(arch: str, image_size: int = 112) -> int:
    """``max_pixels`` giving a square ``image_size``-px image on ``arch`` the merged grid it has at patch 14
    (``image_size`` / 28 tokens per side), so every architecture sees the same number of visual tokens."""
    from vedas.backbones import arch_module

    side = image_size // 28 * 2 * getattr(arch_module(arch), "PATCH_SIZE", 14)
    return side * side


def machine() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    dev = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{cpu}; {torch.get_num_threads()} threads; {dev}; torch {torch.__version__}"


def train_config(method: str, size: DemoSize, data: Path, out: Path, seed: int, base: Path | None = None):
    """The recipe of one method; ``base`` (the trained ``cot`` checkpoint) starts ``latent``/``vedas`` from CoT."""
    from vedas.config import LatentConfig
    from vedas.method.curriculum import CurriculumConfig
    from vedas.method.routing import RoutingConfig
    from vedas.method.scfvr import SCFVRConfig
    from vedas.methods import method as method_of
    from vedas.train.config import DataConfig, ModelConfig, OptimConfig, RunConfig, TrainConfig

    return TrainConfig(
        method=method,  # type: ignore[arg-type]
        model=ModelConfig(
            base="tiny" if base is None else str(base),
            arch=size.arch,
            tiny=size.tiny_model_args(),
            bpe_vocab=size.bpe_vocab,
            vision=size.vision,
        ),
        data=DataConfig(name="synthetic", path=str(data), split="train"),
        latent=LatentConfig(latents=size.latents, replay_k=size.replay_k, max_new_tokens=size.max_new_tokens),
        curriculum=CurriculumConfig(epochs_per_stage=1),
        scfvr=SCFVRConfig(window=3, weight=1.0),
        routing=RoutingConfig(**size.routing) if method_of(method).routing else None,
        optim=OptimConfig(
            lr=size.lr,
            epochs=size.epochs if base is None else size.latent_epochs,
            batch_size=size.batch_size,
            warmup_ratio=0.05,
            seed=seed,
        ),
        # the demo retrains every method it is asked for: an earlier demo's run is replaced
        run=RunConfig(output_dir=str(out / method), log_every=1, overwrite=True),
    )
