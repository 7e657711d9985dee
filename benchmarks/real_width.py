"""Real-width cost: random weights at the widths of Qwen2-VL-2B and Qwen2.5-VL-3B, a few layers.

    .venv/bin/python benchmarks/real_width.py [--part train|bf16|table|all] [--rounds 2] [--json FILE]

Real checkpoints cannot be downloaded here, so the models are random ones of the real classes at the
real widths (decoder hidden / MLP / heads / kv heads, vision embed dim and heads) with only a few
layers, so that a CPU can run them. The vision MLP ratio is the tiny models' 2 (the real towers
use 4 and 3420 units).

- ``train``: a LoRA ``latent`` training step at Qwen2-VL-2B width (4 decoder layers, a 4-block
  vision tower), batch 1, one 448-px image (256 merged visual tokens), the final curriculum stage
  (T_r = 4 latent chunks of K = 32 replayed tokens). Variants, run interleaved round by round:
  no gradient checkpointing; checkpointing as ``vedas train`` does it (decoder layers, and of the
  vision tower only blocks that train — none under LoRA); and checkpointing with transformers' own
  switch on the vision tower (what ``vedas train`` did before: it makes the frozen tower's outputs
  require grad, so the tower is recomputed and back-propagated every step). Reported: median step
  time, vision-tower block forwards per step (a forward pre-hook counts recomputation too), whether
  the tower's outputs require grad, and the peak-RSS rise of one step (each variant in a fresh
  subprocess).
- ``table`` (not part of ``all``; the same as ``vedas bench --size real-width``): every training
  variant (``cot``, ``latent``, routing only, SCF-VR only, full, full + gradient checkpointing, and
  SCF-VR only / full with the old crop default) and generation, at both widths, batch 2, side by
  side in one run: :mod:`vedas.experiments.bench_width`.
- ``bf16``: greedy ``vedas``-mode generation in bf16 on the cached engine and on the recompute
  oracle, at both widths, batch 2 (a 336×336 and a 224×336 image: 144 and 96 visual tokens;
  T_r = 4, K = 16; 2 answer tokens, since bf16 matmuls are slow on CPU): per latent step, the share of
  replayed indices the two engines agree on; the largest latent difference; identical answers.
  The same with the old oracle (plain eager attention, whose maps are rounded to bf16) side by side.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import train_step
from vedas.experiments import bench, bench_width
from vedas.experiments.bench_width import WIDTHS

IMAGE, LATENTS, REPLAY_K = 448, 4, 32
CKPT = {"no_ckpt": "off", "ckpt": "vedas", "ckpt_hf_tower": "transformers' switch on the tower"}


def train_setup(variant: str, layers: int, device: str) -> tuple[Any, Any, torch.optim.Optimizer]:
    from vedas.config import LatentConfig
    from vedas.train.config import LoraSettings, ModelConfig, OptimConfig, TrainConfig

    arch, width = WIDTHS["qwen2_vl_2b"]
    tiny = {**width, "layers": layers, "vision_depth": 4, "max_pixels": IMAGE * IMAGE}
    cfg = TrainConfig(
        method="latent",
        model=ModelConfig(arch=arch, tiny=tiny),
        latent=LatentConfig(latents=LATENTS, replay_k=REPLAY_K),
        lora=LoraSettings(enabled=True),
        optim=OptimConfig(gradient_checkpointing=variant != "no_ckpt", seed=0),
    )
    objective, batch, opt = train_step.final_stage_step(cfg, train_step.records(1, IMAGE), device)
    if variant == "ckpt_hf_tower":
        objective.vm[0].model.model.visual.gradient_checkpointing_enable({"use_reentrant": False})
    return objective, batch, opt


@contextlib.contextmanager
def count_tower(objective: Any) -> Iterator[list[int]]:
    """Counts the vision blocks' forwards (recomputation included) and whether the tower's output
    requires grad, while open."""
    visual = objective.vm[0].model.model.visual
    seen = [0, 0]

    def pre(*_: Any) -> None:
        seen[0] += 1

    def post(_m: Any, _a: Any, out: Any) -> None:
        first = out.pooler_output if hasattr(out, "pooler_output") else out
        first = first[0] if isinstance(first, (tuple, list)) else first
        seen[1] = int(bool(getattr(first, "requires_grad", False)))

    # on a submodule: checkpointing re-runs a block's ``forward``, not its ``__call__``, so a hook on the
    # block itself would not see the recomputation
    hooks = [b.mlp.register_forward_pre_hook(pre) for b in visual.blocks]
    hooks.append(visual.register_forward_hook(post))
    try:
        yield seen
    finally:
        for h in hooks:
            h.remove()


def train_part(layers: int, rounds: int, device: str) -> dict[str, Any]:
    runs = {v: train_setup(v, layers, device) for v in CKPT}
    tower: dict[str, dict[str, int]] = {}
    for v, (o, b, opt) in runs.items():  # warm-up, counting the tower's work in one step
        with count_tower(o) as seen:
            train_step.step(o, b, opt)
        blocks = len(o.vm[0].model.model.visual.blocks)
        tower[v] = {"block_forwards_per_step": seen[0] // blocks, "outputs_require_grad": seen[1]}
    times: dict[str, list[float]] = {v: [] for v in CKPT}
    for _ in range(rounds):
        for v, (o, b, opt) in runs.items():
            times[v].append(train_step.step(o, b, opt))
    del runs
    mem = {v: peak_memory(v, layers, device) for v in CKPT}

    def ratio(a: str, b: str) -> float:
        return statistics.median(x / y for x, y in zip(times[a], times[b]))

    return {
        "step_ms": {v: statistics.median(t) for v, t in times.items()},
        "step_ms_all": times,
        "peak_rise_bytes": mem,
        "tower": tower,
        "ckpt_hf_tower_over_ckpt": ratio("ckpt_hf_tower", "ckpt"),
        "ckpt_over_no_ckpt": ratio("ckpt", "no_ckpt"),
    }


def probe(variant: str, layers: int, device: str) -> int:
    o, b, opt = train_setup(variant, layers, device)
    train_step.step(o, b, opt)
    return bench.peak_rise(lambda: train_step.step(o, b, opt), device)


def peak_memory(variant: str, layers: int, device: str) -> int:
    if device.startswith("cuda"):
        return probe(variant, layers, device)
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "OMP_NUM_THREADS": str(torch.get_num_threads())}
    cmd = [sys.executable, __file__, "--probe", variant, "--layers", str(layers), "--device", device]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    return int(res.stdout.strip().splitlines()[-1])


def bf16_part(layers: int, device: str) -> dict[str, Any]:
    from PIL import Image

    import vedas
    from vedas.config import LatentConfig
    from vedas.engine import runners

    out: dict[str, Any] = {}
    rng = torch.Generator().manual_seed(0)
    images = [
        Image.fromarray(torch.randint(0, 256, (h, w, 3), generator=rng, dtype=torch.uint8).numpy())
        for h, w in ((336, 336), (224, 336))  # 144 and 96 merged visual tokens
    ]
    questions = ["How many red squares are there?", "What is the colour of the largest shape in the image?"]
    for name, (arch, width) in WIDTHS.items():
        model, processor = vedas.tiny_model(
            arch, layers=layers, vision_depth=2, max_pixels=IMAGE * IMAGE, **width
        )
        model.to(device=device, dtype=torch.bfloat16)
        vm = vedas.VedasModel(model, processor, LatentConfig(latents=LATENTS, replay_k=16, max_new_tokens=2))
        t0 = time.perf_counter()
        cached = vm.generate(images, questions, mode="vedas", return_details=True)
        row = {}
        for label, attention in (("fp32 maps", runners.ORACLE), ("eager (before)", "eager")):
            runners.RecomputeRunner.attention = attention
            try:
                rec = vm.generate(images, questions, mode="vedas", engine="recompute", return_details=True)
            finally:
                runners.RecomputeRunner.attention = runners.ORACLE
            row[label] = agreement(cached, rec)
        row["seconds"] = time.perf_counter() - t0
        out[name] = row
    return out


def agreement(a: Any, b: Any) -> dict[str, Any]:
    """Per latent step, the share of replayed indices both runs picked (over the batch); the largest
    latent difference; whether the texts are identical."""
    steps = len(a.replay_indices[0])
    share = []
    for t in range(steps):
        same = total = 0
        for ra, rb in zip(a.replay_indices, b.replay_indices):
            same += len(set(ra[t]) & set(rb[t]))
            total += max(len(ra[t]), 1)
        share.append(same / total)
    return {
        "replay_agreement_per_step": share,
        "max_latent_diff": float((a.latents.float() - b.latents.float()).abs().max()),
        "same_text": a.texts == b.texts,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--part", choices=["train", "bf16", "table", "all"], default="all", help="what to measure"
    )
    ap.add_argument(
        "--rounds",
        type=int,
        default=None,
        help="timed rounds of the training parts (after a warm-up; 3, table 2)",
    )
    ap.add_argument("--quick", action="store_true", help="table: tiny stand-in widths (a smoke run)")
    ap.add_argument(
        "--widths", nargs="+", choices=list(WIDTHS), default=None, help="table: only these widths"
    )
    ap.add_argument(
        "--variants", nargs="+", choices=bench_width.OPTIONAL, default=None, help="table: only these"
    )
    ap.add_argument("--layers", type=int, default=4, help="decoder layers of the real-width models")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="torch device")
    ap.add_argument("--json", default=None, help="also write the numbers to this JSON file")
    ap.add_argument("--probe", choices=list(CKPT), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.probe:
        print(probe(args.probe, args.layers, args.device))
        return 0
    result: dict[str, Any] = {
        "device": args.device,
        "threads": torch.get_num_threads(),
        "layers": args.layers,
    }
    if args.part == "table":
        result["table"] = bench_width.run(args, args.device)
    if args.part in ("train", "all"):
        r = result["train"] = train_part(args.layers, args.rounds or 3, args.device)
        print(f"LoRA latent step, Qwen2-VL-2B width, {args.layers} layers, batch 1, {IMAGE}-px image")
        print(
            f"{'variant':16s}{'step s':>9s}{'peak rise MiB':>15s}{'tower fwd/step':>16s}{'tower out grad':>16s}"
        )
        for v in CKPT:
            tw = r["tower"][v]
            print(
                f"{v:16s}{r['step_ms'][v] / 1e3:9.2f}{r['peak_rise_bytes'][v] / 2**20:15.0f}"
                f"{tw['block_forwards_per_step']:16d}{bool(tw['outputs_require_grad'])!s:>16s}"
            )
        print(
            f"checkpointing with the tower's own switch / as vedas does it: {r['ckpt_hf_tower_over_ckpt']:.2f}×; "
            f"checkpointing / none: {r['ckpt_over_no_ckpt']:.2f}×"
        )
    if args.part in ("bf16", "all"):
        r = result["bf16"] = bf16_part(args.layers, args.device)
        for name, row in r.items():
            for oracle in ("eager (before)", "fp32 maps"):
                a = row[oracle]
                share = " / ".join(f"{100 * s:.1f}" for s in a["replay_agreement_per_step"])
                print(
                    f"{name} bf16, oracle {oracle:15s}: replay agreement per step {share} %; "
                    f"max latent diff {a['max_latent_diff']:.3g}; same text {a['same_text']}"
                )
    bench.write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
