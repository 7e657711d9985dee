"""Training-step benchmark: a final-stage ``vedas`` step vs a ``cot`` step vs the reference code's way.

    .venv/bin/python benchmarks/train_step.py [--quick] [--json benchmarks/results/train_step_cpu.json]

One run, one tiny random Qwen2-VL (real architecture, sizes of ``vedas.experiments.bench.SIZES``), the same
8 synthetic-benchmark samples (336-px images: 144 visual tokens each) for every variant:

- ``cot``: explicit-CoT SFT, one teacher-forced pass over prompt + rationale + answer;
- ``vedas``: the final curriculum stage (T_r = 4 latent steps, K = 32 replayed tokens each), SCF-VR
  (λ = 1, W = 3: crops re-encoded by the vision tower) and routing depth scaling (α = 32, D = 1,
  every layer) — the passes of :class:`vedas.train.objective.LatentObjective` through the KV cache;
- ``latent``: the same latent passes without SCF-VR and routing (the IVT-LR-style baseline);
- ``vedas (no routing)``: ``vedas`` without routing;
- ``vedas, recompute``: the same objective on the recompute engine — every latent step re-runs
  the whole prefix with eager attention maps, as the reference code's training forward does;
- ``vedas, grad ckpt``: the cached step with every decoder layer and the vision tower
  checkpointed (:mod:`vedas.train.grad_checkpoint`): the memory it saves and the time it costs.

A step = forward + backward + AdamW update (full fine-tuning). Variants run interleaved, round
by round, after a warm-up; the table shows each variant's median step time and every ratio is
the median over rounds of the ratio *within* a round (load drift between rounds cancels); CUDA is
synchronised around each step. Peak memory: ``max_memory_allocated`` on CUDA; on CPU the rise
of the peak RSS over one step after a warm-up step, each variant in a fresh subprocess.
Targets: vedas / cot ≤ 1.6× (time and memory), recompute / vedas ≥ 2× (time).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from typing import Any

import torch

from vedas.experiments import bench, bench_width

VARIANTS = {
    # name: (method, engine, routing, gradient checkpointing)
    "cot": ("cot", "cached", False, False),
    "latent": ("latent", "cached", False, False),
    "vedas": ("vedas", "cached", True, False),
    "vedas_no_routing": ("vedas", "cached", False, False),
    "vedas_recompute": ("vedas", "recompute", True, False),
    "vedas_grad_ckpt": ("vedas", "cached", True, True),
}
BATCH, LATENTS, REPLAY_K, IMAGE = 8, 4, 32, 336


def records(n: int = BATCH, image: int = IMAGE) -> list[Any]:
    """``n`` synthetic-benchmark training records with ``image``-px images and 3-step rationales."""
    return bench_width.records(n, image)


def setup(variant: str, recs: list[Any], device: str) -> tuple[Any, Any, torch.optim.Optimizer]:
    """The model, the collated batch and the optimizer of one variant (same init for all)."""
    from vedas.config import LatentConfig
    from vedas.method.routing import RoutingConfig
    from vedas.method.scfvr import SCFVRConfig
    from vedas.train.config import ModelConfig, OptimConfig, TrainConfig

    method, engine, routed, ckpt = VARIANTS[variant]
    cfg = TrainConfig(
        method=method,  # type: ignore[arg-type]
        model=ModelConfig(tiny={"max_pixels": IMAGE * IMAGE, **bench.SIZES}),
        latent=LatentConfig(latents=LATENTS, replay_k=REPLAY_K),
        scfvr=SCFVRConfig(window=3, weight=1.0),
        routing=RoutingConfig(layers="all", alpha=32, depth=1) if routed else None,
        optim=OptimConfig(gradient_checkpointing=ckpt, seed=0),
    )
    return final_stage_step(cfg, recs, device, engine)


def final_stage_step(
    cfg: Any, recs: list[Any], device: str, engine: str = "cached", lr: float = 1e-5
) -> tuple[Any, Any, torch.optim.Optimizer]:
    """What `vedas train` builds from ``cfg`` (model, objective, AdamW), with ``recs`` collated at the
    final curriculum stage (every step latent, T_r latents)."""
    from vedas.train.objective import LatentObjective
    from vedas.train.recipe import setup_model, trainable_parameters

    vm = setup_model(cfg)  # the model `vedas train` builds from this config
    vm.model.to(device)
    batch = bench_width.final_stage_batch(vm, recs, cfg.method, cfg)
    torch.manual_seed(0)
    objective = LatentObjective(vm, cfg.method, vm.config, cfg.scfvr, engine=engine)
    objective.to(device).train()
    return objective, batch, torch.optim.AdamW(trainable_parameters(objective, vm), lr=lr)


def step(objective: Any, batch: Any, optimizer: torch.optim.Optimizer) -> float:
    from vedas.experiments.bench import sync

    device = batch.target_ids.device
    sync(device)
    t0 = time.perf_counter()
    out = objective(batch)
    out["loss"].backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    sync(device)
    return 1000 * (time.perf_counter() - t0)


def probe(variant: str, device: str) -> int:
    """Bytes one step adds to the peak (after a warm-up step that allocated the optimizer state)."""
    objective, batch, optimizer = setup(variant, records(), device)
    from vedas.experiments.bench import peak_rise

    step(objective, batch, optimizer)
    return peak_rise(lambda: step(objective, batch, optimizer), device)


def peak_memory(variant: str, device: str) -> int:
    if device.startswith("cuda"):
        return probe(variant, device)
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "OMP_NUM_THREADS": str(torch.get_num_threads())}
    res = subprocess.run(
        [sys.executable, __file__, "--probe", variant, "--device", device],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return int(res.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="2 timed rounds instead of 7 (a smoke run)")
    ap.add_argument("--json", default=None, help="also write the numbers to this JSON file")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="torch device")
    ap.add_argument("--probe", choices=list(VARIANTS), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.probe:
        print(probe(args.probe, args.device))
        return 0
    rounds = 2 if args.quick else 7
    recs = records()
    runs = {v: setup(v, recs, args.device) for v in VARIANTS}
    batch = runs["vedas"][1]
    prompt_tokens = int(batch.prompt.attention_mask.sum(1).float().mean())
    cot_targets = int(runs["cot"][1].target_mask.sum(1).float().mean())
    vedas_targets = int(batch.target_mask.sum(1).float().mean())
    print(
        f"tiny Qwen2-VL {bench.SIZES}; batch {BATCH}; prompt ≈ {prompt_tokens} tokens "
        f"({(IMAGE // 28) ** 2} visual); target tokens cot {cot_targets}, vedas {vedas_targets} + T_r = {LATENTS} "
        f"latent chunks of K = {REPLAY_K} replayed tokens + z; device {args.device}, {torch.get_num_threads()} threads"
    )
    times: dict[str, list[float]] = {v: [] for v in VARIANTS}
    for o, b, opt in runs.values():  # warm-up
        step(o, b, opt)
    for _ in range(rounds):
        for v, (o, b, opt) in runs.items():
            times[v].append(step(o, b, opt))
    ms = {v: statistics.median(t) for v, t in times.items()}
    del runs
    mem = {v: peak_memory(v, args.device) for v in VARIANTS}

    def ratio(a: str, b: str) -> float:
        """Median over rounds of a/b within each round: both ran back to back, so load drift cancels."""
        return statistics.median(x / y for x, y in zip(times[a], times[b]))

    ratios = {
        "time_vedas_over_cot": ratio("vedas", "cot"),
        "time_latent_over_cot": ratio("latent", "cot"),
        "memory_vedas_over_cot": mem["vedas"] / max(mem["cot"], 1),
        "speedup_vedas_over_recompute": ratio("vedas_recompute", "vedas"),
        "memory_recompute_over_vedas": mem["vedas_recompute"] / max(mem["vedas"], 1),
        "memory_saved_by_grad_ckpt": 1 - mem["vedas_grad_ckpt"] / max(mem["vedas"], 1),
        "time_cost_of_grad_ckpt": ratio("vedas_grad_ckpt", "vedas") - 1,
    }
    print(f"\n{'variant':22s}{'step ms':>10s}{'peak MiB':>10s}")
    for v in VARIANTS:
        print(f"{v:22s}{ms[v]:10.1f}{mem[v] / 2**20:10.1f}")
    print(
        f"\nvedas / cot step time      {ratios['time_vedas_over_cot']:.2f}×  (target ≤ 1.6×)\n"
        f"latent / cot step time     {ratios['time_latent_over_cot']:.2f}×\n"
        f"vedas / cot peak memory    {ratios['memory_vedas_over_cot']:.2f}×\n"
        f"recompute / vedas time     {ratios['speedup_vedas_over_recompute']:.2f}×  (target ≥ 2×)\n"
        f"recompute / vedas memory   {ratios['memory_recompute_over_vedas']:.2f}×\n"
        f"grad ckpt: memory saved {100 * ratios['memory_saved_by_grad_ckpt']:.0f} %, "
        f"time cost {100 * ratios['time_cost_of_grad_ckpt']:+.0f} %"
    )
    if args.json:
        result = {
            "device": args.device,
            "threads": torch.get_num_threads(),
            "sizes": {
                **bench.SIZES,
                "batch": BATCH,
                "image": IMAGE,
                "latents": LATENTS,
                "replay_k": REPLAY_K,
                "prompt_tokens": prompt_tokens,
                "cot_target_tokens": cot_targets,
                "vedas_target_tokens": vedas_targets,
            },
            "step_ms": ms,
            "step_ms_all": times,
            "peak_memory_bytes": mem,
            **ratios,
        }
        bench.write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
