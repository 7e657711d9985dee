"""The curriculum latent-training recipe as plain functions, read top to bottom (``vedas train``: :mod:`vedas.train.cli`).

    vedas train --config configs/synthetic_tiny.yaml [--optim.lr 1e-4 --run.output_dir runs/x ...]
    torchrun --nproc_per_node 2 -m vedas.cli train --config ...          # data parallel (gloo on CPU)

Methods: ``no_cot`` (answer-only SFT), ``cot`` (explicit CoT SFT), ``latent`` (curriculum +
visual replay; the IVT-LR-style baseline) and ``vedas`` (adds SCF-VR self-distillation and,
when a ``routing`` section is given, routing depth scaling). The config is
:class:`vedas.train.config.TrainConfig`.

:func:`main` only calls the steps below, each usable on its own (``vedas analyze gradients``
and ``benchmarks/train_step.py`` build their runs from them):

- :func:`setup_accelerator`: accelerate on CPU or CUDA, DDP under torchrun, DeepSpeed, FSDP2;
- :func:`setup_data`: the records (data first: a bad row fails before the model is built), the
  rationale check and GAP's difficulty split;
- :func:`setup`: :func:`batch_plan`, :func:`setup_model` (tiny or a real checkpoint, LoRA, what
  of the vision tower trains, routing, gradient checkpointing), :func:`setup_objective` (GAP's
  modules, the objective) and :func:`setup_optimizer` (AdamW, warm-up + cosine);
- :func:`resume` (``--run.resume true``): weights, optimizer, scheduler, RNG states, curriculum
  stage and data position from the newest checkpoint;
- :func:`fit`: the epoch loop (curriculum stage from the epoch), one :func:`train_step` per
  optimizer step (the same passes as inference; CE at labelled positions (+ λ·recon);
  accumulation; the non-finite check; clip; step), metrics, and a checkpoint every
  ``run.save_every`` optimizer steps, written atomically;
- :func:`finish`: the last checkpoint, and :func:`export` of the final model to
  ``<output_dir>/final`` as a vedas checkpoint.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vedas.config import ConfigError, to_dict
from vedas.method import training_hooks
from vedas.method.curriculum import layout, max_steps, num_stages, record_steps, stage_for_epoch
from vedas.methods import method as method_of
from vedas.train import output_dir
from vedas.train import state as train_state
from vedas.train.config import TrainConfig, load_config
from vedas.train.interrupt import Interrupted, StopOnSignal
from vedas.train.metrics import MetricLogger


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or inf: training stops before the bad step touches any weight."""


@dataclass
class TrainData:
    """The training records; with ``data.difficulty`` the hard questions' ids (the rest train as CoT);
    with ``data.answer_only`` the ids of records without a rationale, which train on the answer alone."""

    records: Any
    hard: set[str] | None = None
    answer_only: set[str] = field(default_factory=set)


@dataclass
class Run:
    """One training run's pieces, as :func:`setup` builds them; :func:`fit` and :func:`train_step` use them."""

    cfg: TrainConfig
    acc: Any
    data: TrainData
    vm: Any
    objective: Any
    params: list[torch.nn.Parameter]
    """What the optimizer steps (and clips), each parameter once."""
    optimizer: Any
    scheduler: Any
    modules: torch.nn.ModuleDict
    """What a checkpoint holds: the objective and the checkpoint extras (routers, GAP modules)."""
    steps_per_epoch: int
    total_steps: int
    checkpoints: Path | None
    """Where checkpoints go; None for a run that writes none (its non-finite error says so)."""
    wrapped: Any = None
    """The objective as the accelerator prepared it (DDP, DeepSpeed); None until then."""


def _silent(line: str) -> None:
    """A ``say`` for the processes other than the main one."""


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# --- setup -------------------------------------------------------------------------------


def _deepspeed_plugin(cfg: TrainConfig) -> Any:
    from accelerate import DeepSpeedPlugin

    if cfg.run.resume:
        raise ConfigError("run.resume: resuming a DeepSpeed run is not supported (its states are pickled)")
    if not torch.cuda.is_available():  # DeepSpeed's CPU accelerator over gloo (how the tests run it)
        from accelerate import PartialState

        os.environ["ACCELERATE_USE_DEEPSPEED"] = "true"
        PartialState(backend="gloo")
    return DeepSpeedPlugin(hf_ds_config=cfg.run.deepspeed, gradient_accumulation_steps=cfg.optim.grad_accum)


def setup_accelerator(cfg: TrainConfig) -> Any:
    """The accelerate ``Accelerator`` of ``cfg``: one CPU or GPU, DDP under torchrun, DeepSpeed with ``run.deepspeed``."""
    if not torch.cuda.is_available():  # say it, so an installed DeepSpeed does not log its auto-detection
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    from accelerate import Accelerator, DistributedDataParallelKwargs, DistributedType

    ds, sharded = bool(cfg.run.deepspeed), bool(cfg.run.fsdp)
    fsdp_plugin = None
    if sharded:
        from vedas.train import fsdp

        fsdp_plugin = fsdp.plugin(cfg.run.fsdp)
    acc = Accelerator(
        cpu=not torch.cuda.is_available() and not ds,
        mixed_precision=cfg.optim.mixed_precision,
        gradient_accumulation_steps=cfg.optim.grad_accum,
        deepspeed_plugin=_deepspeed_plugin(cfg) if ds else None,
        fsdp_plugin=fsdp_plugin,
        # F_SR (and routers) sit idle at stage 0 and on image-less batches
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
    )
    if ds and acc.distributed_type != DistributedType.DEEPSPEED:
        raise ConfigError(
            f"run.deepspeed: accelerate did not start DeepSpeed (distributed type {acc.distributed_type}); "
            "launch with torchrun/accelerate and check the deepspeed install"
        )
    if sharded and acc.distributed_type == DistributedType.MULTI_CPU:
        from vedas.train import fsdp

        fsdp.on_cpu(acc, fsdp_plugin)
    if sharded and acc.distributed_type != DistributedType.FSDP:
        raise ConfigError(
            f"run.fsdp: accelerate did not start FSDP (distributed type {acc.distributed_type}); "
            "launch with torchrun --nproc_per_node N -m vedas.cli train ..."
        )
    if ds:  # the shipped config says "auto": our config decides
        ds_config = acc.state.deepspeed_plugin.deepspeed_config
        # accelerate fills the other "auto"s from the micro-batch size
        ds_config["train_micro_batch_size_per_gpu"] = cfg.optim.batch_size
        if ds_config.get("gradient_clipping") == "auto":
            ds_config["gradient_clipping"] = cfg.optim.clip
    if acc.is_main_process and acc.num_processes > 1:
        print(f"distributed: {acc.distributed_type.value}, {acc.num_processes} processes")
    return acc


def setup_data(cfg: TrainConfig, say: Callable[[str], None] = print) -> TrainData:
    """The training records; records without the rationale the method needs stop the run (naming them),
    are skipped and counted (``data.skip_bad``) or train on the answer alone (``data.answer_only``);
    a difficulty file must cover the records."""
    from vedas.data import load as load_data

    d = cfg.data
    records = load_data(d.name, path=d.path, split=d.split, limit=d.limit, skip_bad=d.skip_bad)
    answer_only = without_rationale(cfg, records, say)
    say(records.describe())
    for row in records.skipped_rows:
        say(f"skipped {row['id']}: {row['reason']}")
    if not records:
        raise ConfigError(f"data: no training records left in {d.path or d.name} ({records.describe()})")
    hard = None
    for hook in training_hooks():  # the first hook with a split decides
        hard = hard if hard is not None else hook.difficulty_split(d.difficulty, [r.id for r in records])
    if hard is not None:
        n_hard = sum(r.id in hard for r in records)
        say(f"difficulty split: {n_hard} hard questions get latent supervision, {len(records) - n_hard} CoT")
    return TrainData(records, hard, answer_only)


def without_rationale(cfg: TrainConfig, records: Any, say: Callable[[str], None]) -> set[str]:
    """Records the method needs a rationale for and that have none: a ConfigError naming them, or (with
    ``data.skip_bad``) dropped from ``records`` and counted as ``no_rationale``; with ``data.answer_only``
    their ids, returned (they train on the answer alone)."""
    if not method_of(cfg.method).rationale:
        return set()
    limit = max_steps(cfg.latent.latents, cfg.curriculum)
    empty = [r.id for r in records if not record_steps(r.steps, r.rationale, limit)]
    if not empty:
        return set()
    if cfg.data.answer_only:
        say(f"{len(empty)} records without a rationale train on the answer alone: {empty[:5]}")
        return set(empty)
    if not cfg.data.skip_bad:
        raise ConfigError(
            f"data: method {cfg.method!r} needs a rationale; {len(empty)} records have none: {empty[:5]}; "
            "skip them with --data.skip_bad true, or train them on the answer alone with --data.answer_only true"
        )
    src = f"{records.name}/{records.split}"
    records.drop(
        {rid: ("no_rationale", f"{src} row {rid!r}: no rationale for method {cfg.method!r}") for rid in empty}
    )
    return set()


def corpus(records: Any) -> list[str]:
    """The text a tiny model's BPE is trained on: questions, options, rationales and answer sentences."""
    from vedas.prompts import answer_target, format_question

    return [
        f"{format_question(r.question, r.choices or None, r.context or None)}\n{r.rationale}\n{answer_target(r.answer)}"
        for r in records
    ]


def setup_model(cfg: TrainConfig, records: Any = None) -> Any:
    """The VedasModel to train: tiny or a real checkpoint, with LoRA, routing and checkpointing if asked."""
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
            target_modules=lora_target(vm, cfg.lora.target_modules),
        )
        inject_adapter_in_model(lc, vm.model)
        for n, p in vm.model.named_parameters():
            p.requires_grad = "lora_" in n
    if cfg.model.vision != "train":
        for n, p in vm.backbone.vision_tower().named_parameters():
            # the projectors into the decoder: the merger, and Qwen3-VL's DeepStack mergers
            merger = ".merger." in f".{n}" or n.startswith("deepstack_merger_list.")
            p.requires_grad = cfg.model.vision == "merger" and merger and p.requires_grad
    if cfg.routing is not None:
        from vedas.method import routing

        routing.enable_routing(vm, cfg.routing)
    if cfg.optim.gradient_checkpointing:  # after the freezing above: it checkpoints only what trains
        from vedas.train import grad_checkpoint as checkpointing

        checkpointing.enable(vm.backbone)
    return vm


def lora_target(vm: Any, names: list[str]) -> str:
    """peft's ``target_modules`` regex: the named projections inside the decoder layers only, found by
    where the backbone's decoder layers sit in the model (``model.language_model.layers`` in Qwen-VL,
    ``model.layers`` in Chameleon, whose VQ-VAE has no such names anyway)."""
    layers = vm.backbone.decoder_layers()
    prefix = next(n for n, m in vm.model.named_modules() if m is layers)
    return rf"{re.escape(prefix)}\.\d+\.(.*\.)?({'|'.join(names)})"


def setup_objective(
    cfg: TrainConfig, vm: Any, records: Any, device: Any, say: Callable[[str], None] = print
) -> Any:
    """``vm`` on ``device`` with the modules the training hooks fit (GAP's, as the config asks), and the
    objective that trains it."""
    from vedas.train.objective import LatentObjective

    vm.model.to(device)
    for hook in training_hooks():
        for line in hook.prepare(vm, records, cfg.latent):
            say(line)
    return LatentObjective(vm, cfg.method, cfg.latent, cfg.scfvr).to(device)


def trainable_parameters(objective: Any, vm: Any) -> list[torch.nn.Parameter]:
    """What the optimizer steps: the objective's trainable parameters and the checkpoint extras', each
    once (routers and GAP modules are both extras and objective submodules)."""
    params = [p for p in objective.parameters() if p.requires_grad]
    params += [p for m in vm.extras.modules().values() for p in m.parameters() if p.requires_grad]
    return list({id(p): p for p in params}.values())


def setup_optimizer(
    cfg: TrainConfig, objective: Any, vm: Any, total_steps: int
) -> tuple[list[torch.nn.Parameter], torch.optim.Optimizer, Any]:
    """(parameters, AdamW, linear warm-up over ``optim.warmup_ratio`` of ``total_steps`` then cosine decay)."""
    from transformers import get_cosine_schedule_with_warmup

    o = cfg.optim
    params = trainable_parameters(objective, vm)
    optimizer = torch.optim.AdamW(params, lr=o.lr, weight_decay=o.weight_decay, betas=(o.beta1, o.beta2))
    scheduler = get_cosine_schedule_with_warmup(
        optimizer, math.ceil(o.warmup_ratio * total_steps), total_steps
    )
    return params, optimizer, scheduler


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


def setup(cfg: TrainConfig, acc: Any, data: TrainData, total_steps: int | None = None) -> Run:
    """The model, objective and optimizer that train on ``data``; ``total_steps`` (the schedule's length)
    defaults to every epoch's steps, capped at ``run.max_steps``."""
    say = print if acc.is_main_process else _silent
    _, steps_per_epoch = batch_plan(len(data.records), cfg, acc.num_processes)
    if total_steps is None:
        total_steps = steps_per_epoch * cfg.optim.epochs
        if cfg.run.max_steps:
            total_steps = min(total_steps, cfg.run.max_steps)
    vm = setup_model(cfg, data.records)
    if drop_unusable(vm, cfg, data, say):
        _, steps_per_epoch = batch_plan(len(data.records), cfg, acc.num_processes)
        total_steps = min(total_steps, steps_per_epoch * cfg.optim.epochs)
    objective = setup_objective(cfg, vm, data.records, acc.device, say)
    params, optimizer, scheduler = setup_optimizer(cfg, objective, vm, total_steps)
    return Run(
        cfg=cfg,
        acc=acc,
        data=data,
        vm=vm,
        objective=objective,
        params=params,
        optimizer=optimizer,
        scheduler=scheduler,
        modules=torch.nn.ModuleDict({"objective": objective, **vm.extras.modules()}),
        steps_per_epoch=steps_per_epoch,
        total_steps=total_steps,
        checkpoints=Path(cfg.run.output_dir) / "checkpoints",
    )


def drop_unusable(vm: Any, cfg: TrainConfig, data: TrainData, say: Callable[[str], None]) -> int:
    """With ``data.skip_bad``: drop the records the model cannot take (an image shape its processor
    refuses, a prompt over its context limit: an InputError of ``prepare_records``), counted as
    ``bad_input``; returns how many. Without it such a record stops the run when its batch comes,
    naming it."""
    from vedas.errors import InputError

    if not cfg.data.skip_bad:
        return 0
    mode = "vedas" if method_of(cfg.method).latent else "no_cot"
    bad: dict[str, tuple[str, str]] = {}
    for r in data.records:
        try:
            vm.prepare_records([r], mode=mode)
        except InputError as e:
            bad[r.id] = ("bad_input", str(e))
    if bad:
        data.records.drop(bad)
        for rid, (_, msg) in bad.items():
            say(f"skipped {rid}: bad_input ({msg})")
    return len(bad)


def resume(run: Run) -> train_state.TrainState:
    """Load the newest checkpoint under ``run.checkpoints`` into ``run``; returns where training stood."""
    assert run.checkpoints is not None
    say = print if run.acc.is_main_process else _silent
    last = train_state.latest(run.checkpoints)
    if last is None:
        raise ConfigError(f"run.resume: no checkpoint under {run.checkpoints}")
    output_dir.check_resume(last, to_dict(run.cfg), to_dict(type(run.cfg)()))
    state = train_state.load(last, run.modules, run.optimizer, run.scheduler)
    for hook in training_hooks():
        missing = hook.load_state(run.modules, last)
        if missing:
            say(missing)
    say(f"resumed from {last} (epoch {state.epoch}, batch {state.batch_in_epoch}, step {state.step})")
    return state


# --- main --------------------------------------------------------------------------------


def main(cfg: TrainConfig) -> Path:
    """Train as ``cfg`` says; returns ``<output_dir>/final``."""
    acc = setup_accelerator(cfg)
    lock = output_dir.claim(cfg, acc.is_main_process)  # before anything is read or written
    try:
        if acc.num_processes > 1:  # no rank writes before every rank has checked the directory
            acc.wait_for_everyone()
        seed_everything(cfg.optim.seed)
        data = setup_data(cfg, print if acc.is_main_process else _silent)
        run = setup(cfg, acc, data)
        state = resume(run) if cfg.run.resume else train_state.TrainState()
        prepare(run)
        fit(run, state)
        return finish(run, state)
    finally:
        if lock is not None:
            lock.release()


def prepare(run: Run) -> None:
    """Wrap the objective and optimizer for the accelerator (DDP, DeepSpeed or FSDP2). FSDP2 shards the
    objective in place, replacing its parameters: the optimizer's list is taken again, and a resumed
    run's optimizer state, loaded whole before, is loaded again and sharded like its parameters."""
    acc = run.acc
    if run.cfg.run.fsdp:
        from vedas.train import fsdp

        fsdp.wrap_decoder_layers(acc, run.vm)
    run.wrapped, run.optimizer = acc.prepare(run.objective, run.optimizer)
    if run.cfg.run.fsdp:
        fsdp.keep_through_backward(run.wrapped)
        run.params = trainable_parameters(run.objective, run.vm)
        last = train_state.latest(run.checkpoints) if run.cfg.run.resume and run.checkpoints else None
        if last is not None:
            train_state.load_optimizer(last, run.optimizer, run.acc.device)
            fsdp.shard_optimizer_state(getattr(run.optimizer, "optimizer", run.optimizer))


# --- the loop ----------------------------------------------------------------------------


def stage_of(cfg: TrainConfig, epoch: int) -> int:
    """The curriculum stage of ``epoch`` (0 for the methods without latents)."""
    if not method_of(cfg.method).latent:
        return 0
    return stage_for_epoch(epoch, cfg.latent.latents, cfg.curriculum)


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    g = torch.Generator().manual_seed(seed * 1000003 + epoch)
    return torch.randperm(n, generator=g).tolist()


def collate_records(
    vm: Any,
    cfg: TrainConfig,
    records: list[Any],
    stage: int,
    hard: set[str] | None,
    answer_only: set[str] | frozenset[str] = frozenset(),
) -> Any:
    """The TrainBatch of ``records`` at curriculum ``stage``; with a difficulty split (``hard``) only the
    hard questions get latent supervision, the others train as CoT; ``answer_only`` ids train as
    ``no_cot`` (the answer alone, 0 latents) in the same batch."""
    from vedas.train.objective import collate

    hooks = training_hooks()

    limit = max_steps(cfg.latent.latents, cfg.curriculum)
    lays = [
        layout(
            "no_cot" if r.id in answer_only else supervised(hooks, cfg.method, r.id, hard),
            record_steps(r.steps, r.rationale, limit),
            r.answer,
            stage,
            cfg.latent.latents,
            cfg.curriculum,
        )
        for r in records
    ]
    return collate(vm, records, lays, cfg.method)


def supervised(hooks: list[Any], method: str, record_id: str, hard: set[str] | None) -> str:
    """What a record is supervised with: ``method``, as each hook in turn may change it (GAP: CoT for
    the questions outside the difficulty split)."""
    for hook in hooks:
        method = hook.supervision(method, record_id, hard)
    return method


def micro_batch(run: Run, order: list[int], batch: int) -> list[Any]:
    """This rank's records of micro-batch ``batch`` of an epoch in ``order``."""
    bs, acc = run.cfg.optim.batch_size, run.acc
    lo = (batch * acc.num_processes + acc.process_index) * bs
    return [run.data.records[i] for i in order[lo : lo + bs]]


def train_step(
    run: Run, state: train_state.TrainState, epoch: int, stage: int, order: list[int]
) -> dict[str, Any]:
    """One optimizer step: ``optim.grad_accum`` micro-batches from ``state.batch_in_epoch`` on, each loss
    checked finite before its backward, the gradient norm clipped (and checked), then the update.
    Advances ``state.batch_in_epoch`` and ``state.step``; returns the last micro-batch's outputs."""
    acc, o, step = run.acc, run.cfg.optim, state.step + 1
    # models load in eval mode (from_pretrained, tiny_model); gradient checkpointing and the model's
    # own dropout act in train mode only
    run.objective.train()
    measure = run.cfg.run.grad_ratio and step % run.cfg.run.log_every == 0
    for micro in range(o.grad_accum):
        b = state.batch_in_epoch
        recs = micro_batch(run, order, b)
        batch = collate_records(run.vm, run.cfg, recs, stage, run.data.hard, run.data.answer_only)
        with acc.accumulate(run.wrapped):
            out = run.wrapped(batch)
            check_finite(out["loss"], acc, run.checkpoints, step, epoch, b, recs)
            if measure and micro == o.grad_accum - 1 and "recon" in out:
                out.update(measure_grad_ratio(run, out))
            acc.backward(out["loss"])
            if run.cfg.run.fsdp:
                from vedas.train.fsdp import reshard

                reshard(run.wrapped)
            if acc.sync_gradients and o.clip > 0:
                for what, norm in clip_gradients(run, o.clip).items():
                    check_finite(norm, acc, run.checkpoints, step, epoch, b, recs, what=what)
            run.optimizer.step()
            run.scheduler.step() if acc.sync_gradients else None
            run.optimizer.zero_grad()
        state.batch_in_epoch = b + 1
    state.step = step
    return out


def clip_gradients(run: Run, max_norm: float) -> dict[str, Any]:
    """Clip the gradient norm to ``max_norm``: of every parameter together (``scfvr.clip: joint``), or of
    the model's parameters alone and F_SR's alone (``separate``: F_SR's gradient, which inference never
    uses, then cannot shrink the model's update). Returns each clipped group's norm before clipping."""
    sr = getattr(run.objective, "sr", None)
    if run.cfg.scfvr.clip == "joint" or sr is None:
        return {"gradient norm": run.acc.clip_grad_norm_(run.params, max_norm)}
    own = {id(p) for p in sr.parameters()}
    model = [p for p in run.params if id(p) not in own]
    return {
        "gradient norm": run.acc.clip_grad_norm_(model, max_norm),
        "F_SR gradient norm": run.acc.clip_grad_norm_([p for p in run.params if id(p) in own], max_norm),
    }


def measure_grad_ratio(run: Run, out: dict[str, Any]) -> dict[str, torch.Tensor]:
    """``grad_ce``, ``grad_recon`` and ``grad_ratio`` over the decoder's trainable parameters for this
    micro-batch's losses (``run.grad_ratio``; :func:`vedas.train.objective.grad_ratio`), before its backward."""
    from vedas.train.objective import grad_ratio

    params = [p for p in run.vm.backbone.decoder().parameters() if p.requires_grad]
    return grad_ratio(params, out["ce"], run.cfg.scfvr.weight * out["recon"])


def fit(run: Run, state: train_state.TrainState) -> None:
    """The epochs from ``state`` on: stage from the epoch, :func:`train_step` per optimizer step, metrics
    every ``run.log_every`` steps, a checkpoint every ``run.save_every``; stops after ``run.total_steps``.
    SIGINT/SIGTERM stop it after the current step with a checkpoint (:class:`Interrupted`)."""
    from tqdm.auto import tqdm

    cfg, acc = run.cfg, run.acc
    logger = start_logging(run, resumed_at=state.step or None)  # past step N: the run was resumed there
    bar = tqdm(
        total=run.total_steps,
        initial=state.step,
        disable=not (cfg.run.progress and acc.is_main_process),
        desc=f"train {cfg.method}",
    )
    per_step = cfg.optim.batch_size * cfg.optim.grad_accum * acc.num_processes
    done = state.step >= run.total_steps
    t_last = time.perf_counter()
    with StopOnSignal() as stop:
        for epoch in range(state.epoch, cfg.optim.epochs):
            if done:
                break
            stage = stage_of(cfg, epoch)
            # a run resumed mid-epoch logged this epoch's event before its checkpoint
            if state.batch_in_epoch == 0 and (stage != state.stage or epoch == 0):
                logger.event({"epoch": epoch, "stage": stage, "step": state.step})
            state.stage = stage
            order = epoch_order(len(run.data.records), cfg.optim.seed, epoch)
            while state.batch_in_epoch < run.steps_per_epoch * cfg.optim.grad_accum:
                out = train_step(run, state, epoch, stage, order)
                now = time.perf_counter()
                rate = per_step / max(now - t_last, 1e-9)
                t_last = now
                metrics = step_metrics(run, state, epoch, stage, out, rate)
                bar.update(1)
                bar.set_postfix(loss=f"{metrics['loss']:.3f}", stage=stage, sps=f"{rate:.1f}")
                if state.step % cfg.run.log_every == 0:
                    logger.log(metrics)
                if cfg.run.save_every and state.step % cfg.run.save_every == 0:
                    save_checkpoint(run, state, epoch)
                signum = stop.requested(acc)
                if signum is not None:
                    bar.close()
                    logger.close()
                    raise Interrupted(signum, state.step, save_checkpoint(run, state, epoch))
                if state.step >= run.total_steps:
                    done = True
                    break
            if not done:
                state.epoch, state.batch_in_epoch = epoch + 1, 0
    bar.close()
    logger.close()
    acc.wait_for_everyone()


GRAD_RATIO_KEYS = ("grad_ce", "grad_recon", "grad_ratio")
"""The metrics ``run.grad_ratio`` adds on logged steps."""


def step_metrics(
    run: Run, state: train_state.TrainState, epoch: int, stage: int, out: dict[str, Any], rate: float
) -> dict[str, Any]:
    return {
        "step": state.step,
        "epoch": epoch,
        "stage": stage,
        "lr": run.scheduler.get_last_lr()[0],
        "samples_per_s": rate,
        **{k: out[k].item() for k in ("loss", "ce", "recon", *GRAD_RATIO_KEYS) if k in out},
    }


def check_finite(
    loss: torch.Tensor | float | None,
    acc: Any,
    ckpt_dir: Path | None,
    step: int,
    epoch: int,
    batch: int,
    recs: list[Any],
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
    last = train_state.latest(ckpt_dir) if ckpt_dir is not None else None
    if last:
        kept = f"the last good checkpoint is {last}"
    elif ckpt_dir is None:
        kept = "this run writes no checkpoints"
    else:
        kept = "no checkpoint was written before it (run.save_every)"
    raise NonFiniteLossError(
        f"non-finite {what} ({loss.item()}) at optimizer step {step} (epoch {epoch}, batch {batch}; "
        f"samples {[r.id for r in recs][:8]}); training stopped before this step changed any weight, "
        f"{kept}. Lower optim.lr, check the data, or resume with --run.resume true."
    )


# --- outputs -----------------------------------------------------------------------------


def save_checkpoint(run: Run, state: train_state.TrainState, epoch: int) -> Path | None:
    """``checkpoints/step-N`` from the main process (returned; None elsewhere); none under DeepSpeed,
    whose optimizer states are its own (pickled) format, so no resume there."""
    main = run.acc.is_main_process
    # under FSDP every rank takes part in gathering the full tensors; the main process writes them
    if not (main or run.cfg.run.fsdp) or run.cfg.run.deepspeed or run.checkpoints is None:
        return None
    snap = train_state.TrainState(**vars(state))
    if snap.batch_in_epoch >= run.steps_per_epoch * run.cfg.optim.grad_accum:  # the epoch is done
        snap.epoch, snap.batch_in_epoch = epoch + 1, 0
    trained = trained_record(run.cfg, snap.stage)
    directory = train_state.save(
        run.checkpoints / f"step-{state.step}",
        run.modules,
        run.optimizer,
        run.scheduler,
        snap,
        to_dict(run.cfg),
        write=main,
        # under FSDP2 the model's parameters are shards: a step-N there keeps the training state only
        # (`python -m vedas.train.upgrade` makes it loadable; `final/` is gathered whole)
        describe=None if run.cfg.run.fsdp else lambda tmp: describe_step(run, tmp, trained),
    )
    if directory is None:
        return None
    for hook in training_hooks():
        hook.save_state(run.modules, directory)
    output_dir.prune(run.checkpoints, run.cfg.run.keep_last)
    return directory


def describe_step(run: Run, directory: Path, trained: dict[str, Any]) -> None:
    """Write what ``vedas.load`` of this step-N reads (:mod:`vedas.train.describe`): a run on a named base
    points to it and keeps the changed weights; the tiny model, which only the seed and the data
    rebuild, is written whole."""
    from vedas.train import describe

    cfg = run.cfg
    if cfg.model.base == "tiny":
        describe.write_whole(directory, merged(run.vm, cfg), trained)
    else:
        base = describe.base_pointer(cfg.model.base)
        describe.write_delta(directory, run.vm, base, cfg.model.dtype, cfg.latent, trained)


def start_logging(run: Run, resumed_at: int | None = None) -> MetricLogger:
    """The metric logger, and beside it the resolved config (``config.yaml``) and the records left out
    (``skipped.json``, when any), on the main process."""
    import yaml

    out_dir = Path(run.cfg.run.output_dir)
    logger = MetricLogger(out_dir, run.acc.is_main_process, resumed_at)
    if run.acc.is_main_process:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "config.yaml").write_text(yaml.safe_dump(to_dict(run.cfg), sort_keys=False))
        skipped = getattr(run.data.records, "skipped_rows", [])
        if skipped:  # what the run did not train on, by id and reason
            (out_dir / "skipped.json").write_text(json.dumps(skipped, indent=1))
    return logger


def finish(run: Run, state: train_state.TrainState) -> Path:
    """After :func:`fit`: check the ranks agree, write the last checkpoint and export ``<output_dir>/final``."""
    acc = run.acc
    if run.cfg.run.fsdp:  # the last checkpoint while the states are sharded (all ranks), then whole weights
        from vedas.train import fsdp

        save_checkpoint(run, state, state.epoch)
        fsdp.gather_in_place(run.objective, keep=acc.is_main_process)
    # the check compares each rank's own copy (DDP, DeepSpeed); FSDP2's whole weights were just gathered
    # from the one set of shards, so there is nothing to compare
    if acc.num_processes > 1 and not run.cfg.run.fsdp:
        flat = torch.cat([p.detach().flatten().double() for p in run.params])
        sums = acc.gather(torch.stack([flat.sum(), (flat * flat).sum()])[None].to(acc.device))
        if acc.is_main_process:
            same = bool((sums == sums[0]).all())
            print(f"processes: {acc.num_processes}, parameters identical across ranks: {same}")
    final = Path(run.cfg.run.output_dir) / "final"
    if acc.is_main_process:
        if not run.cfg.run.fsdp:
            save_checkpoint(run, state, state.epoch)
        trained = trained_record(run.cfg, state.stage)
        # FSDP2: the run is over and its modules refuse deepcopy, so LoRA is merged in place
        export(run.vm, run.cfg, final, trained, copy=not run.cfg.run.fsdp)
        print(f"wrote {final}")
        print(
            f"reached curriculum stage {trained['stage']} of {trained['last_stage']}: "
            f"{trained['latents']} of {run.cfg.latent.latents} latent steps trained"
        )
    if acc.num_processes > 1:
        # no rank leaves before `final/` is written: a rank that exits (and tears its process group down,
        # which now and then aborts the process) while the main one exports makes torchrun stop the
        # main one too, leaving a half-written `.final.*` behind
        acc.wait_for_everyone()
    return final


def trained_record(cfg: TrainConfig, stage: int) -> dict[str, Any]:
    """What a run trained, for the checkpoint (``VedasModel.trained``): the last curriculum stage reached,
    and the latent steps that stage trains (eval and infer warn when asked for more)."""
    if not method_of(cfg.method).latent:
        return {"method": cfg.method, "stage": 0, "last_stage": 0, "latents": 0}
    last = num_stages(cfg.latent.latents, cfg.curriculum)
    latents = cfg.latent.latents if stage >= last else stage * cfg.curriculum.latents_per_step
    return {"method": cfg.method, "stage": stage, "last_stage": last, "latents": latents}


def merged(vm: Any, cfg: TrainConfig, copy: bool = True) -> Any:
    """The trained model as a plain VedasModel: LoRA merged into a copy of the weights (or, without
    ``copy``, into ``vm``'s own: FSDP2's modules refuse deepcopy), the extras kept."""
    from vedas.model import VedasModel

    model = vm.model
    if cfg.lora.enabled:
        import copy as copying

        from peft.tuners.lora import LoraLayer

        model = copying.deepcopy(model) if copy else model
        for name, module in list(model.named_modules()):
            if isinstance(module, LoraLayer):
                module.merge()
                parent_name, _, child = name.rpartition(".")
                setattr(model.get_submodule(parent_name), child, module.get_base_layer())
    out = VedasModel(model, vm.processor, cfg.latent)
    out.extras = vm.extras.copy()
    return out


def export(
    vm: Any, cfg: TrainConfig, dest: Path, trained: dict[str, Any] | None = None, copy: bool = True
) -> Path:
    """Write the trained model as a vedas checkpoint (LoRA merged into the weights; into ``vm``'s own
    without ``copy``); ``trained``: what the run reached (:func:`trained_record`), recorded in its config."""
    out = merged(vm, cfg, copy)
    out.trained = trained
    out.save(dest)
    return dest


def load_step(directory: Path, device: Any = None) -> Any:
    """The model a training checkpoint ``checkpoints/step-N`` holds, as a VedasModel (what :func:`export`
    would have written at that step), for a checkpoint saved before step-N described itself
    (:mod:`vedas.train.upgrade`); ``vedas.load`` reads the description instead.

    Rebuilt as the run built it (its saved config: the base model, LoRA, routing, GAP's modules), then
    the trained parameters are restored. A tiny model with a BPE, a PCA latent head or a difficulty
    split needs the run's training data at its ``data.path``; other runs do not read it.
    """
    import yaml

    from vedas.config import from_dict

    cfg = from_dict(TrainConfig, yaml.safe_load((directory / "config.yaml").read_text()))
    cfg.optim.gradient_checkpointing = False  # a training-memory setting; the weights are the same
    needs_data = (cfg.model.base == "tiny" and cfg.model.bpe_vocab) or cfg.latent.latent_head != "none"
    records = setup_data(cfg, _silent).records if needs_data else []
    vm = setup_model(cfg, records)
    objective = setup_objective(cfg, vm, records, torch.device(device or "cpu"), _silent)
    modules = torch.nn.ModuleDict({"objective": objective, **vm.extras.modules()})
    train_state.load_weights(directory, modules)
    for hook in training_hooks():
        hook.load_state(modules, directory)
    out = merged(vm, cfg)
    out.model.eval()
    state = json.loads((directory / "state.json").read_text())
    out.trained = trained_record(cfg, int(state.get("stage", 0)))
    return out


# --- CLI ---------------------------------------------------------------------------------


def resume_command(args: argparse.Namespace) -> str:
    """The command line that continues this run: the same config and overrides, ``--run.resume true``."""
    import shlex

    kept, skip = [], False
    for item in args.overrides:
        if skip:
            skip = False
        elif item in ("--run.resume", "--run.overwrite"):
            skip = True  # and its value
        elif not item.startswith(("--run.resume=", "--run.overwrite=")):
            kept.append(item)
    config = ["--config", args.config] if args.config else []
    world = int(os.environ.get("WORLD_SIZE", "1"))
    launch = ["vedas"] if world == 1 else ["torchrun", "--nproc_per_node", str(world), "-m", "vedas.cli"]
    return shlex.join([*launch, "train", *config, *kept, "--run.resume", "true"])


__all__ = [
    "Interrupted",
    "MetricLogger",
    "NonFiniteLossError",
    "Run",
    "TrainConfig",
    "TrainData",
    "batch_plan",
    "check_finite",
    "collate_records",
    "epoch_order",
    "export",
    "finish",
    "fit",
    "load_config",
    "load_step",
    "main",
    "prepare",
    "resume",
    "seed_everything",
    "setup",
    "setup_accelerator",
    "setup_data",
    "setup_model",
    "setup_objective",
    "setup_optimizer",
    "stage_of",
    "train_step",
]
