"""One optimizer step's loss and whole gradients, written to a safetensors file (a test helper).

    python tests/train/fsdp_probe.py OUT.safetensors STAGE CONFIG --section.field value ...
    torchrun --nproc_per_node 2 tests/train/fsdp_probe.py OUT.safetensors STAGE CONFIG --run.fsdp ... ...

Builds the run as ``vedas train`` does (the recipe's own steps), runs the first optimizer step's
micro-batches at curriculum ``STAGE`` through the prepared (FSDP2 or plain) objective and stops before
the optimizer: ``loss`` is the mean of every micro-batch loss on every rank; ``grad.<name>`` is each
trainable parameter's gradient, whole (gathered from its shards under FSDP2).
"""

from __future__ import annotations

import sys

import torch
from safetensors.torch import save_file

from vedas.train import recipe
from vedas.train.config import load_config
from vedas.train.fsdp import full, reshard


def main(out: str, stage: int, config: str, overrides: list[str]) -> None:
    cfg = load_config(config, overrides)
    acc = recipe.setup_accelerator(cfg)
    recipe.seed_everything(cfg.optim.seed)
    data = recipe.setup_data(cfg, recipe._silent)
    run = recipe.setup(cfg, acc, data)
    recipe.prepare(run)
    run.objective.train()
    order = recipe.epoch_order(len(data.records), cfg.optim.seed, 0)
    losses = []
    for b in range(cfg.optim.grad_accum):
        recs = recipe.micro_batch(run, order, b)
        batch = recipe.collate_records(run.vm, cfg, recs, stage, data.hard, data.answer_only)
        loss = run.wrapped(batch)["loss"]
        acc.backward(loss)  # divides by optim.grad_accum, as in training
        losses.append(loss.detach())
    if cfg.run.fsdp:
        reshard(run.wrapped)
    loss = acc.gather(torch.stack(losses)).mean()
    grads = {
        f"grad.{n}": full(p.grad).detach().cpu()
        for n, p in run.modules.named_parameters()
        if p.requires_grad and p.grad is not None
    }
    if acc.is_main_process:
        save_file({"loss": loss.reshape(1).cpu(), **grads}, out)
    acc.wait_for_everyone()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4:])
