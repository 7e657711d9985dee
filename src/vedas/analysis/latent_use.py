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

The probe the demo and the ablation run (:func:`probe`) adds replay conditions at inference:
``replay_off`` (K = 0: no replayed tokens, so the chunk layout the model was trained on changes
too), ``replay_placeholder`` (K tokens at the same positions with the same weights, each the
sample's mean visual input embedding: the layout stays, the content goes) and, where the data
knows what is relevant (the synthetic benchmark, :mod:`vedas.analysis.replay`),
``replay_oracle`` (relevant cells first) and ``replay_anti`` (empty cells first).

Replacement happens through ``generate(latent_transform=...)`` at every step, before the
latent is fed back, so later latents are computed from the replaced ones; visual replay
still runs. Besides accuracy, each run reports the share of predictions identical to the
trained run's — a sharper signal than accuracy when accuracy is near chance. Writes
``latent_use.png`` (bars + sweep line) and ``latent_use.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
from pathlib import Path
from typing import Any

import torch

from vedas.analysis import base
from vedas.evaluation import bootstrap

HELP = "accuracy with trained, zeroed, noised and shuffled latents, and a latent-count sweep"
CONDITIONS = ("trained", "zeros", "noise", "shuffled")
PERTURBATIONS = ("zeros", "noise", "shuffled")
"""Latent-use conditions whose drop says the latents' content is used."""
CHANCE = 0.25
"""Four options per question."""


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


REPLAY_PROBES = ("replay_off", "replay_placeholder", "replay_oracle", "replay_anti")
"""The probe's replay conditions: K = 0 (the chunk layout changes too), K placeholders at the same
positions (only the content goes), and where the data knows what matters, relevant or empty cells."""


class ProbeModel:
    """A VedasModel whose ``generate_records`` runs under a probe (``evaluate`` takes neither itself): a
    latent transform applied at every step, and/or a replay policy made per batch by ``make_policy(records)``."""

    def __init__(self, vm: Any, transform: Any = None, make_policy: Any = None) -> None:
        self.vm = vm
        self.transform = transform
        self.make_policy = make_policy

    @property
    def device(self) -> torch.device:
        return self.vm.device

    def prepare_records(self, records: Any, **kwargs: Any) -> Any:
        return self.vm.prepare_records(records, **kwargs)

    def generate_records(self, records: Any, **kwargs: Any) -> Any:
        if self.transform is not None:
            kwargs["latent_transform"] = self.transform
        if self.make_policy is not None:
            kwargs["replay_policy"] = self.make_policy(records)
        return self.vm.generate_records(records, **kwargs)


def replay_policies(vm: Any, relevance: Any = None) -> dict[str, Any]:
    """Condition -> ``make(records)`` of its replay policy: ``replay_placeholder`` always;
    ``replay_oracle``/``replay_anti`` when ``relevance`` (a :class:`vedas.analysis.replay.SynthRelevance`)
    knows each record's relevant cells."""
    from vedas.analysis.replay import ORDERS, RelevanceReplay, record_labels
    from vedas.method.replay import PlaceholderReplay

    makers: dict[str, Any] = {"replay_placeholder": lambda records: PlaceholderReplay()}
    if relevance is not None:
        for order in ORDERS:

            def make(records: Any, order: str = order) -> Any:
                return RelevanceReplay(record_labels(vm, records, relevance), order)

            makers[f"replay_{order}"] = make
    return makers


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
        rep = evaluate(ProbeModel(vm, transform=make_transform(name, args.seed)), records, **common)
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


def probe(
    vm: Any,
    test: list[Any],
    method: str,
    seed: int,
    sweep_max: int | None = None,
    tto: Any = None,
    relevance: Any = None,
) -> dict[str, Any]:
    """:func:`measure` (conditions + sweep to ``sweep_max``, default 2·T_r) and the replay probes at
    inference, as the demo and the ablation report it: ``replay_off`` (K = 0), ``replay_placeholder``
    (K placeholders at the same positions) and, with ``relevance``, ``replay_oracle``/``replay_anti``
    (:func:`replay_policies`); ``tto`` optimises the latents in every run. Returns ``conditions``,
    ``sweep``, ``trained_latents``, ``shuffle_unchanged_samples``."""
    from vedas.evaluation.evaluate import evaluate

    args = argparse.Namespace(
        method=method,
        batch_size=16,
        scoring="vedas",
        max_new_tokens=None,
        sweep_max=sweep_max,
        seed=seed,
        no_progress=True,
        checkpoint="",
        data="",
        split="test",
        tto=tto,
    )
    rep = measure(vm, test, args)
    config = vm.config
    try:  # replay off: the same checkpoint, K = 0 at inference only
        vm.config = dataclasses.replace(config, replay_k=0)
        off = evaluate(
            vm, test, method, batch_size=16, scoring="vedas", warmup=False, progress=False, tto=tto
        )
    finally:
        vm.config = config
    reference = [s["prediction"] for s in rep["conditions"]["trained"]["per_sample"]]
    rep["conditions"]["replay_off"] = _summary(off, reference)
    if config.replay_k > 0:  # nothing is replayed to swap otherwise
        for name, make in replay_policies(vm, relevance).items():
            swapped = evaluate(
                ProbeModel(vm, make_policy=make),
                test,
                method,
                batch_size=16,
                scoring="vedas",
                warmup=False,
                progress=False,
                tto=tto,
            )
            rep["conditions"][name] = _summary(swapped, reference)
    return {k: rep[k] for k in ("conditions", "sweep", "trained_latents", "shuffle_unchanged_samples")}


def _condition(name: str) -> Any:
    def outcomes(report: dict[str, Any]) -> dict[str, float]:
        return {
            s["id"]: float(bool(s["correct"])) for s in report["latent_use"]["conditions"][name]["per_sample"]
        }

    return outcomes


def pooled(name: str, reps: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """Mean accuracy per condition and sweep point over seeds, each drop's intervals, and the one-line verdict.

    ``reps``: seed (or ``(seed, replicate)``: latent-phase replicates from one ``cot``, averaged
    within the seed before the interval, :func:`bootstrap.nested_level`) → a report whose
    ``latent_use`` is a :func:`probe`. Each drop has its
    question-level interval (pooled over seeds and questions, models fixed) and, with two or more
    seeds, its seed-level interval (paired t over the runs, :func:`bootstrap.seed_level`). The
    verdict follows the seed-level interval when there is one; with one run it says that it rests
    on the question-level interval only, which leaves out run-to-run variance.
    """
    seeds = sorted(reps)
    # runs probed with other settings (an older report, another --sweep-max) pool what they share
    conds = [
        c
        for c in reps[seeds[0]]["latent_use"]["conditions"]
        if all(c in reps[s]["latent_use"]["conditions"] for s in seeds)
    ]
    per_seed = {c: [reps[s]["latent_use"]["conditions"][c]["accuracy"] for s in seeds] for c in conds}
    drops = {c: _drop(reps, c) for c in conds if c != "trained"}
    points = [{p["latents"]: p["accuracy"] for p in reps[s]["latent_use"]["sweep"]} for s in seeds]
    return from_runs(name, seeds, per_seed, [(p, 1) for p in points], drops)


def from_runs(
    name: str,
    seeds: list[Any],
    per_seed: dict[str, list[float]],
    sweeps: list[tuple[dict[int, float], int]],
    drops: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """A :func:`pooled` row from the accuracy of each run per condition (``per_seed``, in the order of
    ``seeds``) and sweeps ``(latents → accuracy, runs it is the mean of)``: the seed-level drops and
    the verdicts are recomputed; ``drops`` (question level) needs per-question outcomes, so a row
    rebuilt from saved accuracies (:mod:`vedas.experiments.merge`) may have none."""
    drops = drops or {}
    accuracy = {c: statistics.mean(v) for c, v in per_seed.items()}
    seed_drops = _seed_drops(seeds, per_seed, [c for c in per_seed if c != "trained"])
    weight = sum(n for _, n in sweeps)
    sweep = [
        {"latents": k, "accuracy": sum(p[k] * n for p, n in sweeps) / weight}
        for k in sorted(set.intersection(*(set(p) for p, _ in sweeps)))
    ]
    return {
        "method": name,
        "seeds": seeds,
        "accuracy": accuracy,
        "accuracy_per_seed": per_seed,
        "drop": drops,
        "drop_seed_level": seed_drops,
        "sweep": sweep,
        "verdict": _verdict(accuracy["trained"], seed_drops or drops, bool(seed_drops)),
        "replay_verdict": replay_verdict(seed_drops or drops),
    }


def _seed_drops(seeds: list[Any], per_seed: dict[str, list[float]], conditions: list[str]) -> dict[str, Any]:
    """trained − condition at the seed level: paired t over seeds (replicates averaged first)."""
    if all(isinstance(s, tuple) for s in seeds):
        out = {}
        for c in conditions:
            nested = bootstrap.nested_level(
                dict(zip(seeds, per_seed[c])), dict(zip(seeds, per_seed["trained"]))
            )
            if nested is not None:
                out[c] = nested
        return out
    if len(seeds) < 2:
        return {}
    return {c: bootstrap.seed_level(per_seed[c], per_seed["trained"]) for c in conditions}


CONTENT_PROBES = {
    "replay_placeholder": "placeholders at the same positions",
    "replay_anti": "replaying empty cells first (anti)",
}
"""Replay probes that keep the chunk layout and change only what is replayed."""


def replay_verdict(drops: dict[str, dict[str, Any]]) -> str | None:
    """What the replay probes tell apart: the replayed content (placeholders at the same positions, or
    empty cells picked first, lower accuracy) or only the chunk layout (K = 0 does, neither of those
    does); None without the placeholder probe."""
    if "replay_placeholder" not in drops or "replay_off" not in drops:
        return None
    content = [what for c, what in CONTENT_PROBES.items() if c in drops and drops[c]["low"] > 0]
    layout = drops["replay_off"]["low"] > 0
    if content:
        verb = "lower" if len(content) > 1 else "lowers"
        return f"replayed content used: {' and '.join(content)} {verb} accuracy beyond the interval"
    if layout:
        return (
            "chunk layout used, replayed content not shown to be: K = 0 lowers accuracy beyond the interval, "
            "placeholders at the same positions and empty-cell picks do not"
        )
    return "replay not shown to matter: neither K = 0 nor placeholders lower accuracy beyond the interval"


def _verdict(trained: float, drops: dict[str, dict[str, Any]], seed_level: bool) -> str:
    level = "beyond run-to-run variation (seed level)" if seed_level else "beyond the question-level interval"
    caveat = "" if seed_level else " (one run: no seed-level interval, so no claim about the method)"
    used = [c for c in PERTURBATIONS if c in drops and drops[c]["low"] > 0]
    if used:
        return f"latents' content used: replacing them by {', '.join(used)} lowers accuracy {level}{caveat}"
    if trained <= CHANCE + 0.05:
        return "cannot tell: with the latents as trained the accuracy is at or below chance (+5 points), so nothing can drop"
    return (
        f"latents' content not used: no replacement (zeros, noise, shuffled) lowers accuracy {level}{caveat}"
    )


def _drop(reps: dict[int, dict[str, Any]], condition: str) -> dict[str, Any]:
    """trained − condition (a positive difference is a drop), pooled over seeds and questions."""
    xs, ys = [], []
    for seed in sorted(reps):
        rep = reps[seed]
        trained, other = _condition("trained")(rep), _condition(condition)(rep)
        for q in sorted(set(trained) & set(other)):
            xs.append(other[q])
            ys.append(trained[q])
    return bootstrap.paired_difference(xs, ys)


def percent(x: float) -> str:
    return f"{100 * x:.1f}"


def interval_text(d: dict[str, Any]) -> str:
    return f"{100 * d['difference']:+.1f} [{100 * d['low']:+.1f}, {100 * d['high']:+.1f}]"


def table_lines(rows: list[dict[str, Any]], label: str = "method", sweep: bool = True) -> list[str]:
    """A markdown table of :func:`pooled` rows: accuracy per condition with its drop, sweep, verdict.

    A drop's interval is the seed-level one where the row has it (``s``: paired over runs), else the
    question-level one (``q``: models fixed)."""
    # the layout-preserving probes get columns when a row measured them (older reports and K = 0 lack them)
    extra = [c for c in REPLAY_PROBES[1:] if any(c in u["accuracy"] for u in rows)]
    names = " |".join(f" {c.replace('_', ' ')}" for c in extra)
    head = f"| {label} | trained | zeros | noise | shuffled | replay off |" + (f"{names} |" if extra else "")
    head += " sweep (latents→acc %) |" if sweep else ""
    lines = [head + " verdict |", "|---" * (7 + len(extra) + int(sweep)) + "|"]
    for u in rows:
        cells = [_cell(u, c) for c in ("trained", *PERTURBATIONS, "replay_off", *extra)]
        if sweep:
            cells.append(", ".join(f"{p['latents']}→{percent(p['accuracy'])}" for p in u["sweep"]))
        verdict = u["verdict"] + (f"; {u['replay_verdict']}" if u.get("replay_verdict") else "")
        lines.append(f"| {u.get('label', u['method'])} | {' | '.join(cells)} | {verdict} |")
    return lines


def _cell(u: dict[str, Any], condition: str) -> str:
    if condition not in u["accuracy"]:
        return "–"
    if condition == "trained":
        return percent(u["accuracy"][condition])
    seed = (u.get("drop_seed_level") or {}).get(condition)
    drop, level = (seed, "s") if seed else (u["drop"].get(condition), "q")
    if drop is None:  # one run, rebuilt from saved accuracies: no interval of either kind
        return percent(u["accuracy"][condition])
    return f"{percent(u['accuracy'][condition])} (drop {interval_text(drop)} {level})"


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
