"""Does SCF-VR's loss reach the model? ‖λ·∇L_recon‖ / ‖∇L_CE‖ on the decoder, per ``scfvr.form``.

    OMP_NUM_THREADS=1 nice -n 15 .venv/bin/python benchmarks/scfvr_gradients.py \\
        [--steps 12] [--train 64] [--forms paper hidden reference] [--json benchmarks/results/scfvr_gradients.json]

The demo's model at its full size (``vedas.experiments.sizes.FULL`` on the ``fine`` preset: a random tiny
Qwen2-VL, hidden 128, 4 layers, the merger trainable) and its recipe (AdamW at lr 2e-3, clip 1.0,
batch 16), method ``vedas`` without routing (SCF-VR alone, λ = 1, W = 3, zoom 1.25), trained ``--steps``
optimizer steps at the last curriculum stage (every step latent, so every step has replays) from the same
start for each form — the random initialisation, and the model after ``--warm`` steps of ``latent``
(CE only; F_SR and the optimizer start fresh in every row) — with ``run.grad_ratio`` on: every step logs the ratio of the decoder
gradient norms of λ·L_recon and L_CE, measured before its update (:func:`vedas.train.recipe.train_step`).
The table gives the median, min and max of the ratio over the steps, and, at the first step, the same
ratio over the vision merger. The cost of the measurement: the time of a ``paper`` step with and
without it, a few steps each, side by side in this run.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

FORMS = ("paper", "hidden", "reference")


def build(form: str, data: Path, out: Path, steps: int, measure: bool, method: str = "vedas") -> Any:
    """The demo's ``vedas`` run (SCF-VR only) in ``form``, set up and prepared as ``vedas train`` does."""
    from vedas.experiments import sizes
    from vedas.train import recipe

    size = sizes.FULL.with_preset("fine")
    cfg = sizes.train_config(method, size, data, out, seed=0)
    cfg.routing = None  # SCF-VR alone: the ablation's latent+scfvr
    cfg.scfvr = dataclasses.replace(cfg.scfvr, form=form)  # type: ignore[arg-type]
    cfg.run = dataclasses.replace(cfg.run, output_dir=str(out / form), grad_ratio=measure, progress=False)
    recipe.seed_everything(cfg.optim.seed)
    acc = recipe.setup_accelerator(cfg)
    run = recipe.setup(cfg, acc, recipe.setup_data(cfg, lambda _line: None), total_steps=steps)
    recipe.prepare(run)
    return run


def merger_ratio(run: Any) -> float:
    """‖λ·∇L_recon‖ / ‖∇L_CE‖ over the vision merger's parameters on the run's first batch (no update)."""
    from vedas.train import recipe
    from vedas.train.objective import grad_ratio

    order = recipe.epoch_order(len(run.data.records), run.cfg.optim.seed, 0)
    recs = recipe.micro_batch(run, order, 0)
    batch = recipe.collate_records(run.vm, run.cfg, recs, run.cfg.latent.latents, run.data.hard)
    merger = [p for n, p in run.vm.model.named_parameters() if ".merger." in n and p.requires_grad]
    run.objective.train()
    out = run.objective(batch)
    return float(grad_ratio(merger, out["ce"], run.cfg.scfvr.weight * out["recon"])["grad_ratio"])


def train(run: Any, steps: int) -> tuple[list[dict[str, float]], list[float]]:
    """``steps`` optimizer steps at the last curriculum stage; each step's logged metrics and seconds."""
    from vedas.train import recipe
    from vedas.train import state as train_state

    state = train_state.TrainState()
    stage = run.cfg.latent.latents
    order = recipe.epoch_order(len(run.data.records), run.cfg.optim.seed, 0)
    rows, seconds = [], []
    for _ in range(steps):
        if state.batch_in_epoch >= run.steps_per_epoch:
            state.batch_in_epoch = 0
        t0 = time.perf_counter()
        out = recipe.train_step(run, state, 0, stage, order)
        seconds.append(time.perf_counter() - t0)
        rows.append(recipe.step_metrics(run, state, 0, stage, out, 0.0))
    return rows, seconds


def main(argv: list[str] | None = None) -> int:
    import torch

    from vedas.data import synth
    from vedas.experiments import sizes

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/scfvr_gradients")
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--train", type=int, default=64, help="training records (the fine preset, seed 0)")
    ap.add_argument("--forms", nargs="+", default=list(FORMS), choices=FORMS)
    ap.add_argument(
        "--warm",
        type=int,
        default=150,
        help="also start from the model after this many `latent` steps (0: off)",
    )
    ap.add_argument(
        "--cost-steps", type=int, default=3, help="paper steps timed with and without the measurement"
    )
    ap.add_argument("--json", default="benchmarks/results/scfvr_gradients.json")
    args = ap.parse_args(argv)
    out = Path(args.out)
    data = out / "data"
    if not (data / "train.jsonl").is_file():
        synth.write(data, train=args.train, test=0, seed=0, cfg=synth.preset("fine"))
    starts: dict[str, Any] = {"random": None}
    if args.warm:
        warm = build("paper", data, out, args.warm, measure=False, method="latent")
        rows, _ = train(warm, args.warm)
        print(f"warm-up ({args.warm} latent steps): ce {rows[0]['ce']:.3f} -> {rows[-1]['ce']:.3f}")
        starts[f"latent {args.warm} steps"] = {k: v.clone() for k, v in warm.vm.model.state_dict().items()}
    results: dict[str, Any] = {}
    for start, weights in starts.items():
        for form in args.forms:
            run = build(form, data, out, args.steps, measure=True)
            if weights is not None:  # the warmed-up model; F_SR and the optimizer start fresh in every row
                run.vm.model.load_state_dict(weights)
            first_merger = merger_ratio(run)
            rows, seconds = train(run, args.steps)
            ratios = [r["grad_ratio"] for r in rows]
            results[f"{start} / {form}"] = {
                "start": start,
                "form": form,
                "ratio_median": statistics.median(ratios),
                "ratio_min": min(ratios),
                "ratio_max": max(ratios),
                "merger_ratio_first_step": first_merger,
                "steps": rows,
                "step_seconds": seconds,
            }
            print(
                f"{start} / {form}: ratio {ratios[0]:.3g} -> {ratios[-1]:.3g}, "
                f"ce {rows[0]['ce']:.3f} -> {rows[-1]['ce']:.3f}, recon {rows[0]['recon']:.3f} -> {rows[-1]['recon']:.3f}"
            )
    cost = {}
    if args.cost_steps:
        for measure in (False, True):
            run = build("paper", data, out, args.cost_steps + 1, measure=measure)
            _, seconds = train(run, args.cost_steps + 1)
            cost["with" if measure else "without"] = statistics.median(seconds[1:])  # the first step warms up
    print(
        f"\n{'start':<20s}{'form':<10s}{'median ratio':>14s}{'min':>11s}{'max':>11s}{'merger, step 1':>16s}"
    )
    for r in results.values():
        print(
            f"{r['start']:<20s}{r['form']:<10s}{r['ratio_median']:>14.3g}{r['ratio_min']:>11.3g}{r['ratio_max']:>11.3g}"
            f"{r['merger_ratio_first_step']:>16.3g}"
        )
    if cost:
        print(
            f"\nstep time (paper): {cost['without']:.2f} s without the measurement, {cost['with']:.2f} s with it "
            f"({cost['with'] / cost['without']:.2f}x)"
        )
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        record = {
            "command": "benchmarks/scfvr_gradients.py "
            + " ".join(argv if argv is not None else sys.argv[1:]),
            "machine": sizes.machine(),
            "threads": torch.get_num_threads(),
            "model": "vedas.experiments.sizes.FULL on the fine preset (random init), method vedas without routing",
            "steps": args.steps,
            "warm_latent_steps": args.warm,
            "train_records": args.train,
            "forms": results,
            "step_seconds_paper": cost,
        }
        Path(args.json).write_text(json.dumps(record, indent=1) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
