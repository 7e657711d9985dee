"""``vedas analyze latent-use``: does the model use its latents at all?

    vedas analyze latent-use --checkpoint runs/synthetic_tiny/vedas/final --data synthetic:data/synth \\
        --n 64 --out runs/analysis/latent_use

Recent analyses of latent reasoners report that replacing the latents by dummy tokens
leaves accuracy unchanged. This command measures that on a checkpoint, with
:func:`vedas.evaluation.evaluate.evaluate` (same prompts, scoring rule and decoding as ``vedas eval``):

- ``trained``: the latents as the model produces them;
- ``zeros``: every fed-back latent replaced by a zero vector;
- ``noise``: by Gaussian noise scaled to the replaced latent's own L2 norm (seeded);
- ``shuffled``: by the latent of the next sample in the batch at the same step (a roll by
  one, so no sample keeps its own; a batch of one sample is left as it is, and counted);
- a sweep over the latent count 0 … ``--sweep-max`` (default 2·T_r), the trained count
  marked.

Replacement happens through ``generate(latent_transform=...)`` at every step, before the
latent is fed back, so later latents are computed from the replaced ones; visual replay
still runs. Besides accuracy, each run reports the share of predictions identical to the
trained run's — a sharper signal than accuracy when accuracy is near chance. Writes
``latent_use.png`` (bars + sweep line) and ``latent_use.json``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch

from vedas.analysis import base

HELP = "accuracy with trained, zeroed, noised and shuffled latents, and a latent-count sweep"
CONDITIONS = ("trained", "zeros", "noise", "shuffled")


def make_transform(condition: str, seed: int = 0) -> Any:
    """The ``latent_transform(t, z) -> z'`` of a condition (None for ``trained``)."""
    if condition == "trained":
        return None
    if condition == "zeros":
        return lambda t, z: torch.zeros_like(z)
    if condition == "shuffled":
        return lambda t, z: z.roll(1, dims=0)
    if condition == "noise":
        generators: dict[torch.device, torch.Generator] = {}

        def noise(t: int, z: torch.Tensor) -> torch.Tensor:
            g = generators.setdefault(z.device, torch.Generator(device=z.device).manual_seed(seed))
            n = torch.randn(z.shape, generator=g, device=z.device, dtype=torch.float32)
            scale = z.float().norm(dim=-1, keepdim=True) / n.norm(dim=-1, keepdim=True).clamp(min=1e-12)
            return (n * scale).to(z.dtype)

        return noise
    raise ValueError(f"condition={condition!r}: choose one of {list(CONDITIONS)}")


class TransformedModel:
    """A VedasModel whose ``generate_records`` applies a latent transform (``evaluate`` takes none itself)."""

    def __init__(self, vm: Any, transform: Any) -> None:
        self.vm = vm
        self.transform = transform

    @property
    def device(self) -> torch.device:
        return self.vm.device

    def generate_records(self, records: Any, **kwargs: Any) -> Any:
        return self.vm.generate_records(records, latent_transform=self.transform, **kwargs)


def _summary(report: dict[str, Any], reference: list[str] | None) -> dict[str, Any]:
    preds = [s["prediction"] for s in report["per_sample"]]
    same = None if reference is None else sum(a == b for a, b in zip(preds, reference)) / len(preds)
    return {
        "accuracy": report["accuracy"],
        "n": report["n"],
        "latents": report["latents"],
        "ar_steps_mean": report["ar_steps_mean"],
        "same_prediction_as_trained": same,
        "per_sample": [
            {"id": s["id"], "prediction": s["prediction"], "correct": s["correct"]}
            for s in report["per_sample"]
        ],
    }


def measure(vm: Any, records: list[Any], args: argparse.Namespace) -> dict[str, Any]:
    """Every condition and every sweep point; returns the JSON report."""
    from vedas.evaluation.evaluate import evaluate

    trained_count = vm.config.latents
    sweep_max = 2 * trained_count if args.sweep_max is None else args.sweep_max
    common = {
        "method": args.method,
        "batch_size": args.batch_size,
        "scoring": args.scoring,
        "max_new_tokens": args.max_new_tokens,
        "warmup": False,
        "progress": not args.no_progress,
        "tto": getattr(args, "tto", None),
    }
    total = len(CONDITIONS) + sweep_max  # the sweep's trained point reuses the trained run
    bar = base.progress(total, "latent-use runs", not args.no_progress)
    trained = evaluate(vm, records, **common)
    reference = [s["prediction"] for s in trained["per_sample"]]
    conditions = {"trained": _summary(trained, reference)}
    bar.update(1)
    for name in CONDITIONS[1:]:
        rep = evaluate(TransformedModel(vm, make_transform(name, args.seed)), records, **common)
        conditions[name] = _summary(rep, reference)
        bar.update(1)
    sweep = []
    for count in range(sweep_max + 1):
        if count == trained_count:
            point = conditions["trained"]
        else:
            at = {**common, "tto": common["tto"] if count else None}  # nothing to optimise without latents
            point = _summary(evaluate(vm, records, latents=count, **at), reference)
            bar.update(1)
        sweep.append(
            {k: point[k] for k in ("latents", "accuracy", "ar_steps_mean", "same_prediction_as_trained")}
        )
        sweep[-1]["latents"] = count
    bar.close()
    singles = 1 if len(records) % args.batch_size == 1 else 0
    return {
        "checkpoint": str(args.checkpoint),
        "data": args.data,
        "split": args.split,
        "method": args.method,
        "scoring_rule": args.scoring,
        "n": len(records),
        "batch_size": args.batch_size,
        "trained_latents": trained_count,
        "seed": args.seed,
        "shuffle_unchanged_samples": singles,
        "conditions": conditions,
        "sweep": sweep,
    }


def draw(report: dict[str, Any], path: Path) -> Path:
    import numpy as np

    fig, axes = base.figure(1, 2, (10, 3.8))
    ax = axes[0, 0]
    names = list(report["conditions"])
    acc = [report["conditions"][k]["accuracy"] for k in names]
    same = [report["conditions"][k]["same_prediction_as_trained"] for k in names]
    x = np.arange(len(names))
    bars = ax.bar(x - 0.2, acc, 0.4, color=base.COLORS["latent"], label="accuracy")
    ax.bar(x + 0.2, same, 0.4, color="#999999", label="prediction = trained run's")
    for rect, v in zip(bars, acc):
        ax.text(rect.get_x() + rect.get_width() / 2, v, f"{v:.2f}", ha="center", va="bottom", fontsize=7)
    ax.set_xticks(x, names)
    ax.set_ylim(0, 1.08)
    ax.set_title(f"latents replaced (n={report['n']}, rule {report['scoring_rule']})", fontsize=9)
    ax.legend(fontsize=7, loc="best")
    ax = axes[0, 1]
    counts = [p["latents"] for p in report["sweep"]]
    ax.plot(
        counts, [p["accuracy"] for p in report["sweep"]], "o-", color=base.COLORS["latent"], label="accuracy"
    )
    ax.plot(
        counts,
        [p["same_prediction_as_trained"] for p in report["sweep"]],
        "s--",
        color="#999999",
        label="prediction = trained run's",
    )
    ax.axvline(
        report["trained_latents"],
        color="black",
        ls=":",
        lw=1,
        label=f"trained T_r = {report['trained_latents']}",
    )
    ax.set_xlabel("latent steps at inference")
    ax.set_ylim(0, 1.08)
    ax.set_xticks(counts)
    ax.set_title("latent-count sweep", fontsize=9)
    ax.legend(fontsize=7, loc="best")
    ax.grid(True, ls="--", alpha=0.3)
    return base.save_figure(fig, path)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    base.add_model_arguments(parser, n_default=64, n_help="samples evaluated, the first N of the split")
    parser.add_argument(
        "--scoring", default="vedas", help="scoring rule: vedas, m3cot, lmms_sqa, lmms_mcq, gqa"
    )
    parser.add_argument(
        "--sweep-max", type=int, default=None, help="largest latent count in the sweep (default: 2·T_r)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the noise condition")
    parser.add_argument("--max-new-tokens", type=int, default=None, help="cap on generated tokens")
    parser.set_defaults(func=base.run_command("latent-use", run))


def run(args: argparse.Namespace) -> int:
    from vedas.evaluation.scoring import get_rule

    try:
        get_rule(args.scoring)
    except ValueError as e:
        raise base.AnalysisError(f"--scoring: {e}") from None
    base.require(
        args.sweep_max is None or args.sweep_max >= 0, "--sweep-max", f"must be ≥ 0, got {args.sweep_max}"
    )
    base.require(
        args.batch_size >= 2, "--batch-size", f"must be ≥ 2 so latents can be shuffled, got {args.batch_size}"
    )
    vm, records = base.load_model_and_records(args)
    base.require(vm.config.latents >= 1, "--checkpoint", "it was trained with 0 latents: nothing to replace")
    report = measure(vm, records, args)
    out = Path(args.out)
    png = draw(report, out / "latent_use.png")
    js = base.write_json(out / "latent_use.json", report)
    for name, c in report["conditions"].items():
        print(
            f"{name:>9}: accuracy {c['accuracy']:.3f}, same prediction as trained {c['same_prediction_as_trained']:.3f}"
        )
    print("sweep:", ", ".join(f"{p['latents']}→{p['accuracy']:.3f}" for p in report["sweep"]))
    print(f"wrote {png} and {js}")
    return 0
