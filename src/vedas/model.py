"""``VedasModel``: a Hugging Face VLM plus the latent engine, and checkpoint save/load.

    >>> import vedas
    >>> vm = vedas.load("runs/demo/vedas")                 # or a hub id, e.g. "Qwen/Qwen2-VL-2B-Instruct"
    >>> texts, steps = vm.generate([image], ["How many red squares?"], choices=[["2", "3", "4", "5"]])

A checkpoint is a directory: ``config.yaml`` (the vedas settings, including the trained
latent count), and ``model/`` with the weights as safetensors, the HF config and the
processor files. Nothing is pickled; ``trust_remote_code`` is never set.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import sys
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
import yaml
from PIL import Image

from vedas import extras, integrity
from vedas.arguments import check_batch, check_questions
from vedas.backbones import arch_module, backbone_for
from vedas.checkpoint import CONFIG_FILE, DELTA_FILE, STEP_MODEL_FILE, WEIGHTS_DIR, Checkpoint, resolve
from vedas.config import LatentConfig, from_dict, to_dict
from vedas.data.images import DECODE_ERRORS, open_rgb, to_rgb
from vedas.engine import generate as driver
from vedas.engine.attention import install_recorder
from vedas.engine.generate import Details
from vedas.engine.inputs import PromptBatch
from vedas.engine.loop import LatentTransform, StepCallback
from vedas.engine.replay import ReplayPolicy
from vedas.errors import CheckpointError, InputError
from vedas.files import honour_umask
from vedas.method import gap, replay, routing
from vedas.method.tto import TTOConfig, TTOHook
from vedas.methods import LATENT_METHODS, METHODS
from vedas.methods import method as method_of
from vedas.prompts import build_messages
from vedas.tokens import LATENT_START, add_latent_tokens, latent_token_ids

# the inference modes are the method names
MODES = METHODS
LATENT_MODES = LATENT_METHODS

ImageLike = Image.Image | str | os.PathLike | None
MAX_ASPECT = 200
"""The widest aspect ratio Qwen2-VL's processor resizes (its ``smart_resize`` refuses more)."""


def open_image(img: Any, where: str, index: int | None = None) -> Image.Image:
    """``img`` (a PIL image or a path) as an RGB image; an InputError naming ``where`` if it cannot be read."""
    # one conversion rule for every path (vedas.data.images.to_rgb): transparency on white, 16-bit scaled
    if isinstance(img, (str, os.PathLike)):
        try:
            img = open_rgb(img)
        except DECODE_ERRORS as e:
            raise InputError(f"{where}: cannot read image file {os.fspath(img)!r}: {e}", index) from None
    if not isinstance(img, Image.Image):
        raise InputError(f"{where}: expected a PIL image, a path or None, got {type(img).__name__}", index)
    return img if img.mode == "RGB" else to_rgb(img)


def over_limit(i: int, n: int, reserve: int, latent: int, excess: int, truncate: bool, contexts: Any) -> str:
    """The message for sample ``i``'s prompt (``n`` tokens) over the context limit by ``excess`` with
    ``reserve`` tokens to come, ``latent`` of them for the latent steps: what overflows and what to lower."""
    limit = n + reserve - excess
    parts = [f"{n} prompt tokens"]
    if latent:
        parts.append(f"{latent} for the latent steps")
    parts.append(f"{reserve - latent} for the answer (max_new_tokens)")
    fixes = ["shorten the question or context"]
    if latent:
        fixes.append("lower latents (--latents; each step takes replay_k + 1 positions)")
    fixes.append("lower max_new_tokens (--max-new-tokens)")
    if not truncate:
        fixes.append("set truncate_context (--truncate-context) to cut the context")
    cut = ""
    if truncate:
        has_context = contexts is not None and bool(contexts[i])
        cut = (
            " even with its context cut"
            if has_context
            else " (truncate_context is on, but it has no context to cut)"
        )
    return (
        f"prompts[{i}]: {' + '.join(parts)} = {n + reserve}, over the model's context limit of {limit} tokens "
        f"(max_position_embeddings){cut}; {', '.join(fixes[:-1])} or {fixes[-1]}"
    )


@contextlib.contextmanager
def _no_deepspeed_probe() -> Iterator[None]:
    """``save_pretrained`` unwraps the model with accelerate, which imports DeepSpeed, when installed, to
    test for a ``DeepSpeedEngine``; the import costs seconds and prints "Setting accelerator to CPU" on
    stdout. Before anything imported DeepSpeed no such engine can exist, so the probe is answered no."""
    other = sys.modules.get("accelerate.utils.other")
    if "deepspeed" in sys.modules or other is None or not hasattr(other, "is_deepspeed_available"):
        yield
        return
    probe = other.is_deepspeed_available
    other.is_deepspeed_available = lambda: False
    try:
        yield
    finally:
        other.is_deepspeed_available = probe


@contextlib.contextmanager
def naming_records(records: Sequence[Any]) -> Iterator[None]:
    """Re-raise an InputError about sample ``i`` as one about ``records[i]``, by id (``record_id`` set)."""
    try:
        yield
    except InputError as e:
        if e.index is None or not 0 <= e.index < len(records):
            raise
        rid = records[e.index].id
        detail = re.sub(r"^\w+\[\d+\]: ", "", str(e))  # the position means nothing to the user; the id does
        raise InputError(f"record {rid!r}: {detail}", e.index, rid) from None


class VedasModel:
    """A VLM that reasons in latent steps. Wraps the HF model; never modifies its modeling code."""

    def __init__(self, model: Any, processor: Any, config: LatentConfig | None = None) -> None:
        self.model = model
        self.processor = processor
        self.config = config or LatentConfig()
        self.backbone = backbone_for(model, processor)
        self.tokenizer = processor.tokenizer
        self.tokenizer.padding_side = "left"
        self.token_ids = latent_token_ids(self.tokenizer)
        install_recorder(model)
        # modules saved beside the backbone (routers, heads…): name -> (module, plain-dict config)
        self.extras = extras.Extras()
        self.use_routing = True
        """Set False to run mode ``vedas`` without routing depth scaling (an ablation switch)."""
        self.trained: dict[str, Any] | None = None
        """What training reached (``vedas train`` sets it; saved as ``config.yaml``'s ``trained``):
        ``method``, ``stage``, ``last_stage``, ``latents`` (the latent steps trained). None: unknown."""

    @property
    def eos_id(self) -> int:
        """Where an answer ends: the chat turn's end ``<|im_end|>`` where the vocabulary has it (Qwen-VL
        and the tiny models), else the tokenizer's EOS (Chameleon's ``</s>``)."""
        tok = self.tokenizer
        return (
            tok.convert_tokens_to_ids("<|im_end|>") if "<|im_end|>" in tok.get_vocab() else tok.eos_token_id
        )

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    # --- inputs --------------------------------------------------------------------------
    def prompt_texts(
        self,
        questions: Sequence[str],
        num_images: Sequence[int],
        choices: Sequence[Sequence[str] | None] | None,
        contexts: Sequence[str | None] | None,
        mode: str,
    ) -> list[str]:
        check_questions(questions)
        texts = []
        for i, q in enumerate(questions):
            ch = choices[i] if choices is not None else None
            ctx = contexts[i] if contexts is not None else None
            msgs = build_messages(q, ch, ctx, num_images=num_images[i])
            text = self.processor.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
            if mode in LATENT_MODES:
                text += LATENT_START
            texts.append(text)
        return texts

    def prepare(
        self,
        images: Sequence[ImageLike | Sequence[ImageLike]],
        questions: Sequence[str],
        choices: Sequence[Sequence[str] | None] | None = None,
        contexts: Sequence[str | None] | None = None,
        mode: str = "vedas",
        reserve: int = 0,
        latent_reserve: int = 0,
    ) -> PromptBatch:
        """Validate inputs and run the processor (left padding). Errors name the bad argument.

        Images are resized by the model's own processor (small ones upsampled), within
        ``config.min_pixels``/``max_pixels`` when set. A prompt whose tokens plus ``reserve`` (what the
        caller will append: latent passes, new tokens) exceed the model's context limit is an error
        naming the sample and the lengths, unless ``config.truncate_context`` lets its context be cut;
        ``latent_reserve`` (part of ``reserve``) is what the latent steps take, so the hint can name them.
        """
        if mode not in MODES:
            raise InputError(f"mode={mode!r}: choose one of {list(MODES)}")
        check_batch(images, questions, choices, contexts)
        per_sample = [self._open_sample(i, item) for i, item in enumerate(images)]
        num_images = [len(p) for p in per_sample]
        flat = [im for p in per_sample for im in p]
        size = self._image_size()

        def encode(ctx: Sequence[str | None] | None) -> Any:
            texts = self.prompt_texts(questions, num_images, choices, ctx, mode)
            return self.processor(text=texts, images=flat or None, padding=True, return_tensors="pt", **size)

        enc = encode(contexts)
        over = self._overflow(enc, reserve)
        if over and self.config.truncate_context and contexts is not None:
            contexts = self._shorten_contexts(contexts, over)
            enc = encode(contexts)
            over = self._overflow(enc, reserve)
        if over:
            i, excess = next(iter(over.items()))
            n = int(enc["attention_mask"][i].sum())
            raise InputError(
                over_limit(i, n, reserve, latent_reserve, excess, self.config.truncate_context, contexts),
                index=i,
            )
        dev = self.device
        return PromptBatch(
            input_ids=enc["input_ids"].to(dev),
            attention_mask=enc["attention_mask"].to(dev),
            mm_token_type_ids=enc["mm_token_type_ids"].to(dev),
            pixel_values=enc["pixel_values"].to(dev, self.backbone.dtype()) if flat else None,
            image_grid_thw=enc["image_grid_thw"].to(dev) if flat else None,
        )

    def _open_sample(self, i: int, item: Any) -> list[Image.Image]:
        """Sample ``i``'s images, opened; an aspect ratio the processor refuses is an error naming it."""
        items = [] if item is None else list(item) if isinstance(item, (list, tuple)) else [item]
        opened = [open_image(x, f"images[{i}]", index=i) for x in items]
        for im in opened:
            ratio = max(im.size) / min(im.size)
            if ratio > MAX_ASPECT:
                raise InputError(
                    f"images[{i}]: {im.size[0]}×{im.size[1]} px has an aspect ratio of {ratio:.0f}, over the "
                    f"image processor's limit of {MAX_ASPECT}",
                    index=i,
                )
        return opened

    def _image_size(self) -> dict[str, Any]:
        """The processor's ``size`` kwarg for ``config.min_pixels``/``max_pixels`` (nothing when both are unset)."""
        lo, hi = self.config.min_pixels, self.config.max_pixels
        if lo is None and hi is None:
            return {}
        own = self.processor.image_processor.size
        if "longest_edge" not in own:
            raise InputError(
                f"min_pixels/max_pixels ({lo}, {hi}): only Qwen-VL's pixel-budget resize takes them; this "
                f"{self.model.config.model_type} processor resizes to a fixed size ({dict(own)}): leave them unset"
            )
        return {
            "size": {"shortest_edge": lo or own["shortest_edge"], "longest_edge": hi or own["longest_edge"]}
        }

    def context_limit(self) -> int | None:
        """The most tokens the model takes (its text config's ``max_position_embeddings``), if it says."""
        cfg = self.model.config
        return getattr(getattr(cfg, "text_config", cfg), "max_position_embeddings", None)

    def _overflow(self, enc: Any, reserve: int) -> dict[int, int]:
        """Sample index -> tokens over the context limit, for the samples that exceed it."""
        limit = self.context_limit()
        if limit is None:
            return {}
        lengths = enc["attention_mask"].sum(1).tolist()
        return {i: n + reserve - limit for i, n in enumerate(lengths) if n + reserve > limit}

    def _shorten_contexts(self, contexts: Sequence[str | None], over: dict[int, int]) -> list[str | None]:
        """``contexts`` with the overflowing samples' context cut at the end by its excess (plus a margin:
        re-tokenising the cut text may merge differently)."""
        out = list(contexts)
        for i, excess in over.items():
            if out[i]:
                ids = self.tokenizer.encode(out[i], add_special_tokens=False)
                out[i] = self.tokenizer.decode(ids[: max(0, len(ids) - excess - 8)])
        return out

    # --- generation ----------------------------------------------------------------------
    def generate(
        self,
        images: Sequence[ImageLike | Sequence[ImageLike]],
        questions: Sequence[str],
        choices: Sequence[Sequence[str] | None] | None = None,
        mode: str = "vedas",
        latents: int | None = None,
        engine: str = "cached",
        return_details: bool = False,
        contexts: Sequence[str | None] | None = None,
        max_new_tokens: int | None = None,
        latent_transform: LatentTransform | None = None,
        temperature: float = 0.0,
        seed: int | Sequence[int] | None = None,
        tto: Any = None,
        on_step: StepCallback | None = None,
        sample_ids: Sequence[str] | None = None,
        replay_policy: ReplayPolicy | None = None,
    ) -> tuple[list[str], list[int]] | Details:
        """Answer a batch of questions.

        Args:
            images: one entry per sample: a PIL image, a path, a list of them, or None (text only).
            questions: the question texts.
            choices: per sample, the options (lettered (A), (B), … in the prompt) or None.
            mode: ``vedas``/``latent`` (latent steps with visual replay), ``cot`` or ``no_cot`` (plain decoding).
            latents: T_r override; None uses the checkpoint's count (``config.latents``).
            engine: ``cached`` (KV cache, fast), ``recompute`` (re-runs the prefix each step; the oracle) or
                ``static`` (a preallocated cache, passes after the prefill compiled; :mod:`vedas.engine.static`).
            return_details: return a :class:`vedas.engine.generate.Details` instead of ``(texts, ar_steps)``.
            latent_transform: ``f(step, z) -> z'`` applied to each latent before it is fed back
                (latent-use checks, calibration); see :meth:`vedas.engine.loop.LatentLoop.latent_steps`.
                It runs after the GAP transforms the config asks for (``latent_head``, ``latent_norm``).
            temperature: 0 decodes greedily; > 0 samples (``seed``: an int, or one seed per sample).
            tto: a :class:`vedas.method.tto.TTOConfig`: optimise the latents at inference, weights frozen.
            on_step: called after every decoded token with the tokens (B,) and the finished rows; may
                end rows early (:data:`vedas.engine.loop.StepCallback`; ``vedas serve`` streams with it).
            sample_ids: one key per sample seeding its random replay picks (``replay_select: random`` or
                ``random_fixed``); None hashes each sample's prompt and pixels. Either way a sample's
                picks do not depend on the rest of the batch.
            replay_policy: a :class:`vedas.engine.replay.ReplayPolicy` used instead of the config's
                (a probe such as :class:`vedas.method.replay.PlaceholderReplay`).
        """
        if latents is not None and (not isinstance(latents, int) or isinstance(latents, bool) or latents < 0):
            raise InputError(f"latents: must be an int ≥ 0, got {latents!r}")
        if mode not in MODES:
            raise InputError(f"mode={mode!r}: choose one of {list(MODES)}")
        if latents and mode not in LATENT_MODES:
            raise InputError(f"latents={latents} given with mode={mode!r}, which has no latent steps")
        cfg = self.config
        if max_new_tokens is not None:
            cfg = LatentConfig(**{**to_dict(cfg), "max_new_tokens": max_new_tokens})
        latent = mode in LATENT_MODES
        steps = (cfg.latents if latents is None else latents) if latent else 0
        # the sequence grows past the prompt by each latent pass (K replayed tokens + z), <|latent_end|>
        # and the new tokens: the prompt must leave room for all of them
        reserve = steps * (cfg.replay_k + 1) + int(latent) + cfg.max_new_tokens
        batch = self.prepare(
            images,
            questions,
            choices,
            contexts,
            mode,
            reserve=reserve,
            latent_reserve=reserve - cfg.max_new_tokens,
        )
        has_image = batch.input_ids.eq(self.backbone.image_token_id).any(1)
        if mode in LATENT_MODES and cfg.replay_k > 0 and not bool(has_image.all()):
            n = int((~has_image).sum())
            warnings.warn(
                f"{n} of {len(questions)} samples have no image: visual replay is off for them",
                stacklevel=2,
            )
        self.model.eval()
        # the IVT-LR-style `latent` baseline never routes; `vedas` routes when routers are installed
        with routing.allowed(method_of(mode).routing and self.use_routing):
            # GAP's latent transforms (config latent_head / latent_norm) apply to latent modes only
            transform = gap.compose(gap.latent_transform(self, cfg), latent_transform) if latent else None
            seeds = driver.row_seeds(seed, len(questions))
            policy = replay_policy or self._sample_policy(batch, cfg, sample_ids)
            tokens, details = self._run(
                batch, cfg, steps, latent, engine, transform, temperature, seeds, tto, on_step, policy
            )
        details.texts = [self.tokenizer.decode(t, skip_special_tokens=True).strip() for t in tokens]
        details.mode = mode
        if return_details:
            return details
        return details.texts, details.ar_steps

    def _sample_policy(
        self, batch: PromptBatch, cfg: LatentConfig, sample_ids: Sequence[str] | None
    ) -> ReplayPolicy | None:
        """The config's replay policy, random picks seeded per sample (by id, else by prompt and
        pixels): a sample's picks must not depend on the rest of its batch."""
        if not replay.needs_sample_keys(cfg):
            return replay.policy(cfg)  # None (the paper's choice) or a saliency option drawing nothing
        if sample_ids is not None and len(sample_ids) != batch.input_ids.shape[0]:
            raise InputError(f"sample_ids: {len(sample_ids)} given for {batch.input_ids.shape[0]} questions")
        keys = (
            sample_ids if sample_ids is not None else replay.prompt_keys(batch, self.backbone.image_token_id)
        )
        return replay.policy(cfg, [str(k) for k in keys])

    def _run(
        self,
        batch: PromptBatch,
        cfg: LatentConfig,
        steps: int,
        latent: bool,
        engine: str,
        transform: LatentTransform | None = None,
        temperature: float = 0.0,
        seeds: list[int] | None = None,
        tto: TTOConfig | None = None,
        on_step: StepCallback | None = None,
        policy: ReplayPolicy | None = None,
    ) -> tuple[list[list[int]], Details]:
        tok = self.tokenizer
        return driver.run(
            self.backbone,
            batch,
            cfg,
            steps=steps,
            latent_end_id=self.token_ids.end if latent else None,
            eos_id=self.eos_id,
            pad_id=tok.pad_token_id,
            engine=engine,
            suppress=[self.token_ids.start, self.token_ids.latent, self.token_ids.end],
            transform=transform,
            temperature=temperature,
            seeds=seeds,
            hook=None if tto is None else TTOHook(tto),
            on_step=on_step,
            policy=policy,
        )

    # --- dataset records (vedas.data.Record) ---------------------------------------------
    @staticmethod
    def record_inputs(records: Sequence[Any]) -> dict[str, list[Any]]:
        """The ``images``/``questions``/``choices``/``contexts`` arguments of :meth:`prepare` for ``records``."""
        return {
            "images": [r.images for r in records],
            "questions": [r.question for r in records],
            "choices": [r.choices or None for r in records],
            "contexts": [r.context or None for r in records],
        }

    def prepare_records(self, records: Sequence[Any], mode: str = "vedas") -> PromptBatch:
        """:meth:`prepare` on dataset records; an error about one sample names its record."""
        with naming_records(records):
            return self.prepare(**self.record_inputs(records), mode=mode)

    def generate_records(
        self, records: Sequence[Any], **kwargs: Any
    ) -> tuple[list[str], list[int]] | Details:
        """:meth:`generate` on dataset records; ``kwargs`` are its other arguments (``mode``, ``latents``…).
        An error about one sample names its record (``record 'id': …``), not its batch position."""
        kwargs.setdefault("sample_ids", [r.id for r in records])
        with naming_records(records):
            return self.generate(**self.record_inputs(records), **kwargs)

    # --- checkpoints ---------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> Path:
        """Write a checkpoint directory atomically (temp dir, then rename)."""
        dest = Path(path)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
        try:
            meta: dict[str, Any] = {"arch": self.model.config.model_type, "latent": to_dict(self.config)}
            if self.extras:
                meta["extras"] = self.extras.configs()
            if self.trained is not None:
                meta["trained"] = self.trained
            (tmp / CONFIG_FILE).write_text(yaml.safe_dump(meta, sort_keys=False))
            self.extras.save(tmp)
            with _no_deepspeed_probe():
                self.model.save_pretrained(tmp / WEIGHTS_DIR, safe_serialization=True)
            self.processor.save_pretrained(tmp / WEIGHTS_DIR)
            # the sums load verifies (vedas.integrity): bit rot then fails naming the file
            meta["sha256"] = integrity.sums(tmp)
            (tmp / CONFIG_FILE).write_text(yaml.safe_dump(meta, sort_keys=False))
            honour_umask(tmp)
            if dest.exists():
                old = dest.with_name(f".{dest.name}.old")
                shutil.rmtree(old, ignore_errors=True)
                dest.rename(old)
                tmp.rename(dest)
                shutil.rmtree(old, ignore_errors=True)
            else:
                tmp.rename(dest)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return dest


def _model_type(ck: Checkpoint) -> str:
    if ck.kind != "hub":  # check_hf_dir read it already: a local config.json is valid JSON
        config = Path(ck.weights) / "config.json"
        model_type = json.loads(config.read_text()).get("model_type")
        if not model_type:
            raise CheckpointError(f"{config}: has no model_type")
        return str(model_type)
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(ck.weights, trust_remote_code=False).model_type


def load(
    path_or_hub_id: str | os.PathLike,
    *,
    device: str | torch.device | None = None,
    dtype: Any = None,
    **overrides: Any,
) -> VedasModel:
    """Load a vedas checkpoint, a ``vedas train`` run (its ``final/``), one of its ``checkpoints/step-N``,
    or a base HF checkpoint (local directory or hub id).

    A ``step-N`` loads from its own description (``model.yaml``, written by ``vedas train`` beside the
    training state; docs/design.md#checkpoints), never through the training recipe or its data.
    The path is resolved and its files checked first (:func:`vedas.checkpoint.resolve`): a missing or
    corrupt file is a :class:`~vedas.errors.CheckpointError` naming it, before any model is allocated.
    A base checkpoint gets the latent tokens added (rows copied from an existing token) and the
    default :class:`~vedas.config.LatentConfig`; ``overrides`` set LatentConfig fields.
    """
    ck = resolve(path_or_hub_id)
    if ck.kind == "train_step":
        return _load_step(ck, device, dtype, overrides)
    meta = ck.meta
    arch = meta.get("arch") or _model_type(ck)
    latent = from_dict(LatentConfig, {**(meta.get("latent") or {}), **overrides})
    vm = _from_weights(ck.path, ck.weights, arch, latent, device, dtype)
    if ck.kind == "vedas":
        vm.extras.load(Path(ck.path), vm, meta.get("extras") or {})
        vm.trained = meta.get("trained")
    return vm


def _from_weights(
    where: Path | str, weights: str, arch: str, latent: LatentConfig, device: Any, dtype: Any
) -> VedasModel:
    """A VedasModel of the HF weights at ``weights`` (``where``: the checkpoint, for errors)."""
    try:
        mod = arch_module(arch)
    except ValueError as e:
        raise CheckpointError(f"{where}: {e}") from None
    kwargs: dict[str, Any] = {"use_safetensors": True, "trust_remote_code": False}
    if dtype is not None:
        kwargs["dtype"] = dtype
    model = mod.MODEL_CLASS.from_pretrained(weights, **kwargs)
    processor = mod.PROCESSOR_CLASS.from_pretrained(weights)
    add_latent_tokens(model, processor.tokenizer)
    if device is not None:
        model.to(device)
    return VedasModel(model.eval(), processor, latent)


DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32}


def _load_step(
    ck: Checkpoint, device: Any, dtype: Any, overrides: dict[str, Any], with_extras: bool = True
) -> VedasModel:
    """A ``step-N`` as its ``model.yaml`` describes it (written by ``vedas train`` beside the training
    state): whole weights in ``model/``, or its base model (``base``, loaded as training loaded it) with
    the weights training changed (``delta.safetensors``) copied over; then its extras. Neither the
    training recipe nor the training data is needed (docs/design.md#checkpoints)."""
    path, meta = Path(ck.path), ck.meta
    if not meta:
        raise CheckpointError(
            f"{path}: a training checkpoint without {STEP_MODEL_FILE} (saved before step-N checkpoints "
            f"described themselves); add it once with: python -m vedas.train.upgrade {path}"
        )
    latent = from_dict(LatentConfig, {**(meta.get("latent") or {}), **overrides})
    if meta.get("base") is None:
        vm = _from_weights(path, str(path / WEIGHTS_DIR), str(meta.get("arch")), latent, device, dtype)
    else:
        base = str(meta["base"])
        try:
            vm = _base(base, latent, device, dtype or DTYPES[meta.get("dtype", "float32")])
        except CheckpointError as e:
            raise CheckpointError(
                f"{path}: its base model ({STEP_MODEL_FILE}'s base) does not load: {e}"
            ) from None
        _copy_delta(vm, path / DELTA_FILE)
    if with_extras:
        vm.extras.load(path, vm, meta.get("extras") or {})
    vm.trained = meta.get("trained")
    return vm


def _base(pointer: str, latent: LatentConfig, device: Any, dtype: Any) -> VedasModel:
    """A step-N's base model without its extras: the step lists every extra the run had, the base's
    included (installing the base's too would install routing twice)."""
    ck = resolve(pointer)
    if ck.kind == "train_step":
        vm = _load_step(ck, device, dtype, {}, with_extras=False)
        vm.config = latent
        return vm
    arch = ck.meta.get("arch") or _model_type(ck)
    return _from_weights(ck.path, ck.weights, arch, latent, device, dtype)


def _copy_delta(vm: VedasModel, delta: Path) -> None:
    """Copy ``delta``'s tensors into ``vm.model``'s parameters of the same names (each must exist there)."""
    from safetensors.torch import load_file

    tensors = load_file(str(delta), device=str(vm.device))
    params = dict(vm.model.named_parameters())
    unknown = sorted(set(tensors) - set(params))
    if unknown:
        raise CheckpointError(f"{delta}: weights the base model lacks: {unknown[:5]}")
    with torch.no_grad():
        for name, value in tensors.items():
            params[name].copy_(value)
