"""``vedas train``: the curriculum latent-training recipe, readable top to bottom.

    vedas train --config configs/synthetic_tiny.yaml [--optim.lr 1e-4 --run.output_dir runs/x ...]
    torchrun --nproc_per_node 2 -m vedas.cli train --config ...          # data parallel (gloo on CPU)

Methods: ``no_cot`` (answer-only SFT), ``cot`` (explicit CoT SFT), ``latent`` (curriculum +
visual replay; the IVT-LR-style baseline) and ``vedas`` (adds SCF-VR self-distillation and,
when a ``routing`` section is given, routing depth scaling).

setup (config, model, data, optimizer) → main loop (stage from the epoch; the same passes
as inference; CE at labelled positions (+ λ·recon); clip; step) → checkpoints every
``run.save_every`` optimizer steps and at the end, written atomically; ``--run.resume true``
restores weights, optimizer, scheduler, RNG states, curriculum stage and data position.
The final model is exported to ``<output_dir>/final`` as a vedas checkpoint.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from vedas.config import (
    ConfigError,
    LatentConfig,
    _check,
    _check_literal,
    apply_overrides,
    from_dict,
    load_yaml,
    to_dict,
)
from vedas.method.curriculum import (
    LATENT_METHODS,
    METHODS,
    CurriculumConfig,
    layout,
    max_steps,
    record_steps,
    stage_for_epoch,
)
from vedas.method.scfvr import SCFVRConfig
from vedas.methods import Method
from vedas.train import state as train_state

HELP = "curriculum latent training (no_cot | cot | latent | vedas) on one machine or many"

GAP_BUFFERS = "gap_buffers.safetensors"
LORA_ALL = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or inf: training stops before the bad step touches any weight."""


# --- config ------------------------------------------------------------------------------


@dataclass
class ModelConfig:
    """Which VLM to start from."""

    base: str = "tiny"
    """``tiny`` (a random model of the real architecture, offline) or a HF hub id / local directory."""
    arch: str = "qwen2_vl"
    """Architecture of the tiny model (ignored for a real checkpoint, whose config names it)."""
    tiny: dict[str, Any] = field(default_factory=dict)
    """Keyword sizes for :func:`vedas.tiny_model` (hidden, layers, heads, …)."""
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
    """Skip (and count) rows with a corrupt image instead of failing."""
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
    in the loop, :mod:`vedas.train.grad_checkpoint`) and the vision tower. Same loss and gradients, less memory."""
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
    """Continue from the newest checkpoint in ``output_dir/checkpoints``."""
    max_steps: int = 0
    """Stop after this many optimizer steps (0 = run all epochs)."""
    deepspeed: str | None = None
    """A DeepSpeed JSON config (e.g. configs/deepspeed/zero2.json); needs the ``deepspeed`` extra."""
    progress: bool = True


@dataclass
class TrainConfig:
    """Everything ``vedas train`` reads; every field can be overridden as ``--section.field value``."""

    method: Method = "vedas"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    latent: LatentConfig = field(default_factory=LatentConfig)
    curriculum: CurriculumConfig = field(default_factory=CurriculumConfig)
    scfvr: SCFVRConfig = field(default_factory=SCFVRConfig)
    routing: dict[str, Any] | None = None
    """Routing depth scaling settings (method ``vedas`` only); None = off."""
    lora: LoraSettings = field(default_factory=LoraSettings)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def __post_init__(self) -> None:
        _check(self.method in METHODS, "method", f"must be one of {list(METHODS)}, got {self.method!r}")
        _check(
            self.routing is None or self.method == "vedas",
            "routing",
            f"routing depth scaling belongs to method 'vedas', not {self.method!r}",
        )
        _check(
            self.data.difficulty is None or self.method in LATENT_METHODS,
            "data.difficulty",
            f"difficulty-aware latent supervision needs method 'latent' or 'vedas', not {self.method!r}",
        )


def load_config(path: str | None, overrides: list[str]) -> TrainConfig:
    data = load_yaml(path) if path else {}
    return from_dict(TrainConfig, apply_overrides(data, overrides))


# --- setup -------------------------------------------------------------------------------


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def corpus(records: Any) -> list[str]:
    """The text a tiny model's BPE is trained on: questions, options, rationales and answer sentences."""
    from vedas.engine.prompts import answer_target, format_question

    return [
        f"{format_question(r.question, r.choices or None, r.context or None)}\n{r.rationale}\n{answer_target(r.answer)}"
        for r in records
    ]


def build_model(cfg: TrainConfig, records: Any = None) -> Any:
    """The VedasModel to train: tiny or a real checkpoint, with LoRA and routing if asked."""
    import vedas

    latent = cfg.latent
    if cfg.model.base == "tiny":
        bpe = corpus(records) if cfg.model.bpe_vocab and records is not None else None
        model, processor = vedas.tiny_model(
            cfg.model.arch,
            seed=cfg.optim.seed,
            bpe_corpus=bpe,
            bpe_vocab=cfg.model.bpe_vocab or 512,
            **cfg.model.tiny,
        )
        vm = vedas.VedasModel(model, processor, latent)
    else:
        dtype = torch.bfloat16 if cfg.model.dtype == "bfloat16" else torch.float32
        vm = vedas.load(cfg.model.base, dtype=dtype, **to_dict(latent))
    if cfg.lora.enabled:
        from peft import LoraConfig, inject_adapter_in_model

        lc = LoraConfig(
            r=cfg.lora.r,
            lora_alpha=cfg.lora.alpha,
            lora_dropout=cfg.lora.dropout,
            # the decoder only: the vision tower keeps its weights (as in the paper)
            target_modules=rf".*language_model.*\.({'|'.join(cfg.lora.target_modules)})",
        )
        inject_adapter_in_model(lc, vm.model)
        for n, p in vm.model.named_parameters():
            p.requires_grad = "lora_" in n
    if cfg.model.vision != "train":
        for n, p in vm.model.model.visual.named_parameters():
            p.requires_grad = cfg.model.vision == "merger" and ".merger." in f".{n}" and p.requires_grad
    if cfg.routing is not None:
        from vedas.method import routing

        routing.enable_routing(vm, from_dict(routing.RoutingConfig, cfg.routing))  # type: ignore[attr-defined]
    if cfg.optim.gradient_checkpointing:
        from vedas.train import grad_checkpoint as checkpointing

        checkpointing.enable(vm.backbone)
    return vm


def trainable_parameters(objective: Any, vm: Any) -> list[torch.nn.Parameter]:
    """What the optimizer steps: the objective's trainable parameters and the checkpoint extras', each
    once (routers and GAP modules are both extras and objective submodules)."""
    params = [p for p in objective.parameters() if p.requires_grad]
    params += [p for m in vm.extras.modules().values() for p in m.parameters() if p.requires_grad]
    return list({id(p): p for p in params}.values())


def batch_plan(n_records: int, cfg: TrainConfig, world: int) -> tuple[int, int]:
    """(batches per epoch per rank, optimizer steps per epoch); validates the batch arithmetic."""
    o = cfg.optim
    global_batch = o.batch_size * world
    if n_records < global_batch:
        raise ConfigError(
            f"optim.batch_size: {o.batch_size} per device × {world} processes = {global_batch} "
            f"exceeds the {n_records} training records"
        )
    batches = n_records // global_batch  # drop the ragged tail: every rank sees the same count
    if batches < o.grad_accum:
        raise ConfigError(
            f"optim.grad_accum: {o.grad_accum} micro-batches per step but only {batches} per epoch"
        )
    return batches, batches // o.grad_accum


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    g = torch.Generator().manual_seed(seed * 1000003 + epoch)
    return torch.randperm(n, generator=g).tolist()


# --- main --------------------------------------------------------------------------------


def main(cfg: TrainConfig) -> Path:
    if not torch.cuda.is_available():  # say it, so an installed DeepSpeed does not log its auto-detection
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    from accelerate import Accelerator, DistributedDataParallelKwargs, DistributedType
    from tqdm.auto import tqdm
    from transformers import get_cosine_schedule_with_warmup

    from vedas.data import load as load_data
    from vedas.method import gap
    from vedas.train.objective import LatentObjective, collate

    out_dir = Path(cfg.run.output_dir)
    plugin = None
    if cfg.run.deepspeed:
        from accelerate import DeepSpeedPlugin

        if cfg.run.resume:
            raise ConfigError(
                "run.resume: resuming a DeepSpeed run is not supported (its states are pickled)"
            )
        if not torch.cuda.is_available():  # DeepSpeed's CPU accelerator over gloo (how the tests run it)
            from accelerate import PartialState

            os.environ["ACCELERATE_USE_DEEPSPEED"] = "true"
            PartialState(backend="gloo")
        plugin = DeepSpeedPlugin(
            hf_ds_config=cfg.run.deepspeed, gradient_accumulation_steps=cfg.optim.grad_accum
        )
    acc = Accelerator(
        cpu=not torch.cuda.is_available() and not cfg.run.deepspeed,
        mixed_precision=cfg.optim.mixed_precision,
        gradient_accumulation_steps=cfg.optim.grad_accum,
        deepspeed_plugin=plugin,
        # F_SR (and routers) sit idle at stage 0 and on image-less batches
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
    )
    if cfg.run.deepspeed and acc.distributed_type != DistributedType.DEEPSPEED:
        raise ConfigError(
            f"run.deepspeed: accelerate did not start DeepSpeed (distributed type {acc.distributed_type}); "
            "launch with torchrun/accelerate and check the deepspeed install"
        )
    ds = bool(cfg.run.deepspeed)
    if ds:  # the shipped config says "auto": our config decides
        ds_config = acc.state.deepspeed_plugin.deepspeed_config
        # accelerate fills the other "auto"s from the micro-batch size
        ds_config["train_micro_batch_size_per_gpu"] = cfg.optim.batch_size
        if ds_config.get("gradient_clipping") == "auto":
            ds_config["gradient_clipping"] = cfg.optim.clip
    if acc.is_main_process and acc.num_processes > 1:
        print(f"distributed: {acc.distributed_type.value}, {acc.num_processes} processes")
    seed_everything(cfg.optim.seed)

    # data first: a bad row fails before the model is built
    records = load_data(
        cfg.data.name,
        path=cfg.data.path,
        split=cfg.data.split,
        limit=cfg.data.limit,
        skip_bad=cfg.data.skip_bad,
    )
    if acc.is_main_process:
        print(records.describe())
    limit = max_steps(cfg.latent.latents, cfg.curriculum)
    steps_of = [record_steps(r.steps, r.rationale, limit) for r in records]
    if cfg.method != "no_cot":
        empty = [r.id for r, s in zip(records, steps_of) if not s]
        if empty:
            raise ConfigError(
                f"data: method {cfg.method!r} needs a rationale; records without one: {empty[:5]}"
            )
    hard = gap.hard_ids(cfg.data.difficulty, [r.id for r in records]) if cfg.data.difficulty else None
    if hard is not None and acc.is_main_process:
        n_hard = sum(r.id in hard for r in records)
        print(
            f"difficulty split: {n_hard} hard questions get latent supervision, {len(records) - n_hard} CoT"
        )
    batches, steps_per_epoch = batch_plan(len(records), cfg, acc.num_processes)
    total_steps = steps_per_epoch * cfg.optim.epochs
    if cfg.run.max_steps:
        total_steps = min(total_steps, cfg.run.max_steps)

    vm = build_model(cfg, records)
    vm.model.to(acc.device)
    for line in gap.prepare_training(vm, records, cfg.latent):  # GAP modules the config asks for
        if acc.is_main_process:
            print(line)
    objective = LatentObjective(vm, cfg.method, cfg.latent, cfg.scfvr).to(acc.device)
    params = trainable_parameters(objective, vm)
    optimizer = torch.optim.AdamW(
        params, lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay, betas=(cfg.optim.beta1, cfg.optim.beta2)
    )
    scheduler = get_cosine_schedule_with_warmup(
        optimizer, math.ceil(cfg.optim.warmup_ratio * total_steps), total_steps
    )
    model_for_state = torch.nn.ModuleDict({"objective": objective, **vm.extras.modules()})
    state = train_state.TrainState()
    ckpt_dir = out_dir / "checkpoints"
    if cfg.run.resume:
        last = train_state.latest(ckpt_dir)
        if last is None:
            raise ConfigError(f"run.resume: no checkpoint under {ckpt_dir}")
        state = train_state.load(last, model_for_state, optimizer, scheduler)
        if not gap.load_buffers(model_for_state, last / GAP_BUFFERS) and acc.is_main_process:
            print(f"{last} has no {GAP_BUFFERS}: the GAP norm EMA starts afresh")
        if acc.is_main_process:
            print(
                f"resumed from {last} (epoch {state.epoch}, batch {state.batch_in_epoch}, step {state.step})"
            )
    wrapped, optimizer = acc.prepare(objective, optimizer)

    resolved = to_dict(cfg)
    logger = MetricLogger(out_dir, acc.is_main_process)
    if acc.is_main_process:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "config.yaml").write_text(__import__("yaml").safe_dump(resolved, sort_keys=False))
    bar = tqdm(
        total=total_steps,
        initial=state.step,
        disable=not (cfg.run.progress and acc.is_main_process),
        desc=f"train {cfg.method}",
    )
    done = state.step >= total_steps
    t_last, seen = time.perf_counter(), 0
    for epoch in range(state.epoch, cfg.optim.epochs):
        if done:
            break
        stage = (
            stage_for_epoch(epoch, cfg.latent.latents, cfg.curriculum) if cfg.method in LATENT_METHODS else 0
        )
        if stage != state.stage or epoch == 0:
            logger.event({"epoch": epoch, "stage": stage, "step": state.step})
        state.stage = stage
        order = epoch_order(len(records), cfg.optim.seed, epoch)
        start = state.batch_in_epoch
        for b in range(start, batches - batches % cfg.optim.grad_accum):
            lo = (b * acc.num_processes + acc.process_index) * cfg.optim.batch_size
            chunk = [order[i] for i in range(lo, lo + cfg.optim.batch_size)]
            recs = [records[i] for i in chunk]
            lays = [
                layout(
                    gap.supervision(cfg.method, records[i].id, hard),
                    steps_of[i],
                    records[i].answer,
                    stage,
                    cfg.latent.latents,
                    cfg.curriculum,
                )
                for i in chunk
            ]
            batch = collate(vm, recs, lays, cfg.method)
            with acc.accumulate(wrapped):
                out = wrapped(batch)
                check_finite(out["loss"], acc, ckpt_dir, state.step + 1, epoch, b, recs)
                acc.backward(out["loss"])
                if acc.sync_gradients and cfg.optim.clip > 0:
                    norm = acc.clip_grad_norm_(params, cfg.optim.clip)
                    check_finite(norm, acc, ckpt_dir, state.step + 1, epoch, b, recs, what="gradient norm")
                optimizer.step()
                scheduler.step() if acc.sync_gradients else None
                optimizer.zero_grad()
            seen += len(recs) * acc.num_processes
            state.batch_in_epoch = b + 1
            if not acc.sync_gradients:
                continue
            state.step += 1
            now = time.perf_counter()
            rate = seen / max(now - t_last, 1e-9)
            metrics = {
                "step": state.step,
                "epoch": epoch,
                "stage": stage,
                "lr": scheduler.get_last_lr()[0],
                "samples_per_s": rate,
                **{k: out[k].item() for k in ("loss", "ce", "recon") if k in out},
            }
            t_last, seen = now, 0
            bar.update(1)
            bar.set_postfix(loss=f"{metrics['loss']:.3f}", stage=stage, sps=f"{rate:.1f}")
            if state.step % cfg.run.log_every == 0:
                logger.log(metrics)
            if cfg.run.save_every and state.step % cfg.run.save_every == 0 and acc.is_main_process and not ds:
                _save(ckpt_dir, model_for_state, optimizer, scheduler, state, resolved, epoch, batches, cfg)
            if state.step >= total_steps:
                done = True
                break
        if not done:
            state.epoch, state.batch_in_epoch = epoch + 1, 0
    bar.close()
    acc.wait_for_everyone()
    if acc.num_processes > 1:
        flat = torch.cat([p.detach().flatten().double() for p in params])
        sums = acc.gather(torch.stack([flat.sum(), (flat * flat).sum()])[None].to(acc.device))
        if acc.is_main_process:
            same = bool((sums == sums[0]).all())
            print(f"processes: {acc.num_processes}, parameters identical across ranks: {same}")
    final = out_dir / "final"
    if acc.is_main_process:
        if not ds:  # DeepSpeed keeps its optimizer states in its own (pickled) format: no resume there
            _save(ckpt_dir, model_for_state, optimizer, scheduler, state, resolved, state.epoch, batches, cfg)
        export(vm, cfg, final)
        logger.close()
        print(f"wrote {final}")
    return final


def check_finite(
    loss: torch.Tensor | float | None,
    acc: Any,
    ckpt_dir: Path,
    step: int,
    epoch: int,
    batch: int,
    recs,
    what: str = "loss",
) -> None:
    """Stop (on every rank at once) before a NaN/inf loss reaches the weights; name the last good checkpoint."""
    if loss is None:  # DeepSpeed clips inside its own step and may report no norm
        return
    loss = torch.as_tensor(loss).detach().float()
    bad = (~torch.isfinite(loss)).float().reshape(1).to(acc.device)
    if acc.num_processes > 1:
        bad = acc.reduce(bad, reduction="sum")
    if not bool(bad.item()):
        return
    last = train_state.latest(ckpt_dir)
    kept = (
        f"the last good checkpoint is {last}"
        if last
        else "no checkpoint was written before it (run.save_every)"
    )
    raise NonFiniteLossError(
        f"non-finite {what} ({loss.item()}) at optimizer step {step} (epoch {epoch}, batch {batch}; "
        f"samples {[r.id for r in recs][:8]}); training stopped before this step changed any weight, "
        f"{kept}. Lower optim.lr, check the data, or resume with --run.resume true."
    )


def _save(ckpt_dir, module, optimizer, scheduler, state, resolved, epoch, batches, cfg) -> None:
    from vedas.method import gap

    snap = train_state.TrainState(**vars(state))
    if snap.batch_in_epoch >= batches - batches % cfg.optim.grad_accum:  # the epoch is done
        snap.epoch, snap.batch_in_epoch = epoch + 1, 0
    directory = train_state.save(
        ckpt_dir / f"step-{state.step}", module, optimizer, scheduler, snap, resolved
    )
    gap.save_buffers(module, directory / GAP_BUFFERS)  # the norm EMA is state, not a parameter


def export(vm: Any, cfg: TrainConfig, dest: Path) -> Path:
    """Write the trained model as a vedas checkpoint (LoRA merged into the weights)."""
    from vedas.model import VedasModel

    model = vm.model
    if cfg.lora.enabled:
        import copy

        from peft.tuners.lora import LoraLayer

        model = copy.deepcopy(model)
        for name, module in list(model.named_modules()):
            if isinstance(module, LoraLayer):
                module.merge()
                parent_name, _, child = name.rpartition(".")
                setattr(model.get_submodule(parent_name), child, module.get_base_layer())
    out = VedasModel(model, vm.processor, cfg.latent)
    out.extras = vm.extras.copy()
    out.save(dest)
    return dest


class MetricLogger:
    """Metrics as JSONL (``metrics.jsonl``) and TensorBoard (``tb/``), main process only."""

    def __init__(self, out_dir: Path, active: bool) -> None:
        self.active = active
        self.tb = None
        if active:
            out_dir.mkdir(parents=True, exist_ok=True)
            self.file = open(out_dir / "metrics.jsonl", "a")  # noqa: SIM115
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(out_dir / "tb"))
            except ImportError:  # tensorboard is a dependency, but a trimmed install still trains
                self.tb = None

    def log(self, metrics: dict[str, Any]) -> None:
        if not self.active:
            return
        self.file.write(json.dumps(metrics) + "\n")
        self.file.flush()
        if self.tb is not None:
            for k, v in metrics.items():
                if k != "step" and isinstance(v, (int, float)):
                    self.tb.add_scalar(k, v, metrics["step"])

    def event(self, info: dict[str, Any]) -> None:
        """The stage schedule, logged as it happens."""
        if self.active:
            self.file.write(json.dumps({"event": "stage", **info}) + "\n")
            self.file.flush()
            print(f"epoch {info['epoch']}: curriculum stage {info['stage']}")

    def close(self) -> None:
        if self.active:
            self.file.close()
            if self.tb is not None:
                self.tb.close()


# --- CLI ---------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", default=None, help="YAML config (see configs/); fields not given keep defaults"
    )
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    parser.epilog = (
        "Any config field can follow as --section.field VALUE, e.g. --optim.lr 1e-4 --run.output_dir runs/x "
        "--latent.latents 2 --lora.enabled true. Unknown fields and bad values fail before any work starts."
    )
    parser.set_defaults(func=run, overrides=[])


def run(args: argparse.Namespace) -> int:
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as e:
        print(f"vedas train: bad config: {e}", file=sys.stderr)
        return 2
    if args.print_config:
        print(__import__("yaml").safe_dump(to_dict(cfg), sort_keys=False))
        return 0
    try:
        main(cfg)
    except NonFiniteLossError as e:
        print(f"vedas train: {e}", file=sys.stderr)
        return 1
    return 0
