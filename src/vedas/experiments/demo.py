"""``vedas demo``: the main job on the embedded default — no download at all.

    vedas demo                      # the fine preset, 4 methods, 2 trainings at a time (docs/results.md#fine-preset)
    vedas demo --quick              # a smoke run that learns nothing
    vedas demo --seeds 3            # repeat over 3 seeds and report the spread
    vedas demo --method no_cot cot  # only some of the methods
    vedas demo --arch qwen3_vl      # the same on a tiny Qwen3-VL (patch 16, DeepStack)
    vedas demo --arch chameleon     # the same job on a tiny Chameleon (VQ-VAE image codes)
    vedas demo --preset easy        # the earlier 112-px benchmark (16 visual tokens, all replayed)
    vedas demo --ablation --seeds 3 # the ablation (vedas.experiments.ablation), resumable
    vedas demo --ablation --merge a/ablation.json b/ablation.json --out c  # saved reports as one (.merge)

1. writes the synthetic benchmark (``vedas data synth``) under ``<out>/data``;
2. builds one tiny random model of the real Qwen2-VL architecture (``--arch``: any registered
   one) with a small BPE trained
   on the training text and trains ``no_cot`` and ``cot`` from it with the same recipe, data
   and epochs; ``latent`` (curriculum + visual replay) and ``vedas`` (+ SCF-VR, + routing
   depth scaling) continue from the trained ``cot`` checkpoint through the curriculum —
   stage 0 of the paper's recipe (and Coconut's) is explicit-CoT training;
3. evaluates each on the test split (strict ``vedas`` scoring, batch 16, warm-up, split latency);
4. writes ``<out>/report.md``, ``<out>/report.json`` (a ``methods`` list and ``checkpoints``:
   method → checkpoint directory) and PNG plots (accuracy vs latency; training curves).

The report states the machine, the sizes, the seeds and the scoring rule. Accuracies are
reported as they come out.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

from vedas import cli_args
from vedas.errors import UserError

# the shared sizes, re-exported: `demo.DemoSize`, `demo.FULL`… are what the demo runs
from vedas.experiments.sizes import (  # noqa: F401
    CHAMELEON_IMAGE,
    DEFAULT_JOBS,
    DEMO_SYNTH,
    FULL,
    PRESET_REPLAY_K,
    QUICK,
    DemoSize,
    add_jobs,
    add_preset,
    demo_pixels,
    machine,
    sized,
    train_config,
)
from vedas.methods import METHODS

HELP = (
    "run the main job on the embedded default: synthetic data, tiny Qwen2-VL (or --arch), 4 methods, report"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="runs/demo", help="output directory (default: runs/demo)")
    parser.add_argument("--quick", action="store_true", help="a smaller run (about 3 minutes on 2 cores)")
    parser.add_argument(
        "--seeds", type=int, default=1, help="repeat over this many seeds and report the spread"
    )
    cli_args.add_method(parser, default=list(METHODS), several=True, help="methods to train and compare")
    add_preset(parser)
    parser.add_argument("--train", type=int, default=None, help="override the number of training samples")
    parser.add_argument("--test", type=int, default=None, help="override the number of test samples")
    parser.add_argument("--epochs", type=int, default=None, help="override the epochs of no_cot and cot")
    parser.add_argument(
        "--latent-epochs", type=int, default=None, help="override the epochs of latent and vedas (after cot)"
    )
    cli_args.add_arch(parser, "the tiny random model's architecture (default: qwen2_vl)")
    parser.add_argument(
        "--max-new-tokens", type=int, default=None, help="override the generation cap (default: 160)"
    )
    add_jobs(parser)
    parser.add_argument(
        "--ablation",
        action="store_true",
        help="run the ablation instead (vedas.experiments.ablation): from one trained cot, latent, +RDS, +SCF-VR, "
        "vedas, random-replay and no-replay controls; resumable; writes <out>/ablation.md and .json",
    )
    parser.add_argument(
        "--variants",
        nargs="+",
        default=None,
        metavar="NAME",
        help="with --ablation: only these variants (default: the seven of the ablation; cot is always "
        "trained first); the trained remedies latent_nograd (latent_grad: none) and latent+gap (GAP norm "
        "calibration in training) and the options latent+rowcol (a saliency option), vedas+hidden and "
        "latent+hidden (SCF-VR's hidden form on vedas, on latent+scfvr) and latent+scfvr_clip (F_SR clipped "
        "apart from the model) run only when named here",
    )
    parser.add_argument(
        "--remedies",
        nargs="*",
        default=[],
        metavar="NAME",
        help="with --ablation: remedies for unused latents applied at inference to each seed's latent "
        "checkpoint and probed for latent use (gap_norm, pca_head, tto; default: all three; "
        "--no-remedies: none)",
    )
    parser.add_argument(
        "--no-remedies",
        dest="remedies",
        action="store_const",
        const=None,
        help="with --ablation: skip the remedies",
    )
    parser.add_argument(
        "--replicates",
        type=int,
        default=1,
        metavar="R",
        help="with --ablation: latent-phase replicates per seed: every variant trained R times from the seed's "
        "one cot, each with its own data order (seed + 1000·r), so run-to-run variance within a cot is "
        "measured apart from the variance between cot seeds (default: 1)",
    )
    parser.add_argument(
        "--cot-min",
        type=float,
        default=None,
        metavar="ACC",
        help="with --ablation: a seed whose cot scores below this accuracy on its own benchmark is reported "
        "and excluded (nothing is trained from it) (default: 0.9; 0 with --quick, whose cot learns nothing)",
    )
    parser.add_argument(
        "--sweep-max",
        type=int,
        default=None,
        metavar="N",
        help="with --ablation: the latent-use probe's latent-count sweep runs 0…N latents (default: 2·T_r; "
        "0: only the trained count)",
    )
    parser.add_argument(
        "--vision-seed",
        type=int,
        default=0,
        metavar="S",
        help="with --ablation: the random vision tower's own seed, the same for every seed of the ablation, "
        "whose seeds then vary data, tokenizer and initialisation only (default: 0)",
    )
    parser.add_argument(
        "--only-seeds",
        nargs="+",
        type=int,
        default=None,
        metavar="S",
        help="with --ablation: train only these of the --seeds (another process takes the rest); the "
        "report includes every unit finished on disk",
    )
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="with --ablation: train nothing; rewrite the report from every unit finished on disk under --out "
        "(after several processes, or variants added later with fewer --replicates)",
    )
    parser.add_argument(
        "--merge",
        nargs="+",
        default=None,
        metavar="JSON",
        help="with --ablation: train nothing; merge saved ablation.json reports of the same settings (seeds run "
        "apart, units since deleted) into one under --out: rows, seed-level intervals and verdicts over the "
        "union of runs (question-level intervals need the units, so a merge of two or more has none)",
    )
    parser.set_defaults(func=run)


def train_method(cfg: Any) -> tuple[str, float]:
    """Train one method (a :func:`vedas.experiments.jobs.run_graph` job): its final checkpoint and the seconds."""
    from vedas.train.recipe import main as train_main

    t0 = time.perf_counter()
    final = train_main(cfg)
    return str(final), time.perf_counter() - t0


def run_seed(seed: int, size: DemoSize, methods: list[str], out: Path, jobs: int = 1) -> dict[str, Any]:
    """Train every method of one seed (``jobs`` at a time), then evaluate them one after the other.

    ``cot`` is trained before the latent methods, which continue from its checkpoint; with
    ``jobs`` > 1 ``no_cot`` trains beside ``cot`` and ``latent`` beside ``vedas``. Evaluation waits
    until every training has finished, so the latencies are measured on an otherwise idle machine.
    """
    import vedas
    from vedas.analysis.latent_use import probe
    from vedas.analysis.replay import SynthRelevance
    from vedas.data import load, synth
    from vedas.evaluation.evaluate import evaluate
    from vedas.experiments.jobs import run_graph
    from vedas.method.curriculum import LATENT_METHODS

    data = out / "data"
    if not (data / "test.jsonl").is_file():
        synth.write(
            data,
            train=size.train,
            test=size.test,
            seed=seed,
            cfg=size.synth_config(),
            progress=True,
        )
    test = list(load("synthetic", path=str(data), split="test"))
    ordered = sorted(methods, key=lambda m: METHODS.index(m))
    # latent and vedas continue from cot when it is trained (curriculum stage 0 is explicit CoT)
    latent = [m for m in ordered if m in LATENT_METHODS and "cot" in ordered]
    first = [m for m in ordered if m not in latent]

    def job(method: str, base: Path | None) -> Any:
        return method, train_method, (train_config(method, size, data, out, seed, base=base),)

    def after(method: Any, result: tuple[str, float]) -> list[Any]:
        return [job(m, Path(result[0])) for m in latent] if method == "cot" else []

    trained = dict(run_graph([job(m, None) for m in first], after, jobs))
    cot_final = trained["cot"][0] if "cot" in trained else None
    results = {}
    for method in [m for m in ordered if m in trained]:
        final, train_s = trained[method]
        base = cot_final if method in LATENT_METHODS else None
        vm = vedas.load(final)
        report = evaluate(vm, test, method, batch_size=16, scoring="vedas", dataset="synthetic/test")
        report["train_seconds"] = train_s
        report["checkpoint"] = final
        report["initialised_from"] = base if base is not None else "tiny random model"
        if method in LATENT_METHODS:  # does the model use the latents' content? (docs/analysis.md)
            report["latent_use"] = probe(vm, test, method, seed, relevance=SynthRelevance(data))
        (out / method / "report.json").write_text(json.dumps(report, indent=2))
        print(
            f"{method}: accuracy {report['accuracy']:.3f}, AR steps {report['ar_steps_mean']:.1f}, "
            f"latency {report['latency_ms']['total']:.1f} ms/sample, trained in {train_s:.0f} s"
        )
        results[method] = report
    return results


def summarise(per_seed: list[dict[str, Any]], methods: list[str]) -> list[dict[str, Any]]:
    rows = []
    for m in methods:
        reps = [r[m] for r in per_seed]
        acc = [r["accuracy"] for r in reps]
        rows.append(
            {
                "method": m,
                "accuracy": statistics.mean(acc),
                "accuracy_std": statistics.stdev(acc) if len(acc) > 1 else 0.0,
                "accuracies": acc,
                "ar_steps_mean": statistics.mean(r["ar_steps_mean"] for r in reps),
                "latency_ms": {
                    k: statistics.mean(r["latency_ms"][k] for r in reps)
                    for k in ("prefill", "latent", "decode", "total")
                },
                "train_seconds": statistics.mean(r["train_seconds"] for r in reps),
                "n": reps[0]["n"],
            }
        )
    return rows


def plots(out: Path, rows: list[dict[str, Any]], seed_dirs: list[Path]) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.2))
    for i, r in enumerate(sorted(rows, key=lambda r: (r["accuracy"], r["latency_ms"]["total"]))):
        ax.errorbar(
            r["latency_ms"]["total"],
            100 * r["accuracy"],
            yerr=100 * r["accuracy_std"],
            fmt="o",
            capsize=3,
            label=f"{r['method']}: {100 * r['accuracy']:.1f} %, {r['ar_steps_mean']:.0f} AR steps",
        )
        ax.annotate(  # labels of points at the same accuracy are staggered, not stacked
            r["method"],
            (r["latency_ms"]["total"], 100 * r["accuracy"]),
            textcoords="offset points",
            xytext=(0, 8 if i % 2 == 0 else -16),
            ha="center",
            fontsize=8,
        )
    ax.axhline(25, color="grey", ls=":", lw=1, label="chance (4 options)")
    ax.set_ylim(0, 112)
    ax.margins(x=0.15)
    ax.set_xlabel("latency per sample (ms, batch 16)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title("Synthetic benchmark: accuracy vs latency")
    ax.legend(loc="center right", fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "accuracy_vs_latency.png", dpi=120)
    plt.close(fig)

    fig, axes = plt.subplots(1, len(rows), figsize=(3.2 * len(rows), 3), sharey=True)
    for ax, r in zip(list(axes) if len(rows) > 1 else [axes], rows):
        metrics = [
            json.loads(line)
            for line in (seed_dirs[0] / r["method"] / "metrics.jsonl").read_text().splitlines()
        ]
        steps = [m for m in metrics if "ce" in m]
        ax.plot([m["step"] for m in steps], [m["ce"] for m in steps], lw=1, label="CE")
        if any("recon" in m for m in steps):
            ax.plot(
                [m["step"] for m in steps if "recon" in m],
                [m["recon"] for m in steps if "recon" in m],
                lw=1,
                label="recon",
            )
        for e in (m for m in metrics if m.get("event") == "stage" and m["stage"] > 0):
            ax.axvline(e["step"], color="grey", lw=0.6, ls="--")
        ax.set_title(r["method"])
        ax.set_yscale("log")  # the late drop of a loss that already looks flat shows on a log scale
        ax.set_xlabel("optimizer step")
        ax.legend(fontsize=7)
    fig.suptitle("Training curves (dashed: curriculum stage changes)", fontsize=9)
    fig.tight_layout()
    fig.savefig(out / "training_curves.png", dpi=110)
    plt.close(fig)
    return ["accuracy_vs_latency.png", "training_curves.png"]


def latent_use_rows(per_seed: list[dict[str, Any]], methods: list[str]) -> list[dict[str, Any]]:
    """The latent-use line of each latent method, pooled over seeds (:func:`vedas.analysis.latent_use.pooled`)."""
    from vedas.analysis.latent_use import pooled

    return [
        pooled(m, {i: r[m] for i, r in enumerate(per_seed)})
        for m in methods
        if all("latent_use" in r.get(m, {}) for r in per_seed)
    ]


def write_report(
    out: Path,
    rows,
    size: DemoSize,
    seeds: list[int],
    seed_dirs: list[Path],
    elapsed: float,
    latent_use: list[dict[str, Any]] | None = None,
) -> None:
    from vedas.analysis.latent_use import table_lines

    latent_use = latent_use or []
    pngs = plots(out, rows, seed_dirs)
    checkpoints = {r["method"]: str(seed_dirs[0] / r["method"] / "final") for r in rows}
    meta = {
        "machine": machine(),
        "sizes": {**size.__dict__},
        "seeds": seeds,
        "scoring_rule": "vedas",
        "elapsed_seconds": elapsed,
    }
    (out / "report.json").write_text(
        json.dumps({"methods": rows, "checkpoints": checkpoints, "latent_use": latent_use, **meta}, indent=2)
    )
    spread = len(seeds) > 1
    vision = (
        "VQ-VAE frozen (its codes are an argmin: no gradient reaches it)"
        if size.arch == "chameleon"
        else f"vision tower: {size.vision} trains"
    )
    lines = [
        "# vedas demo: the four methods on the synthetic benchmark",
        "",
        f"- machine: {meta['machine']}",
        f"- model: tiny random {size.arch} {size.tiny_model_args()}, BPE vocabulary {size.bpe_vocab}",
        f"- data: synthetic benchmark, {size.train} train / {size.test} test samples, seeds {seeds}, "
        f"preset `{size.preset}` {size.synth_config()}",
        f"- training: `no_cot` and `cot` {size.epochs} epochs from the random model; `latent` and `vedas` start "
        f"from the trained `cot` checkpoint (curriculum stage 0 = explicit CoT) and train {size.latent_epochs} "
        f"more epochs, one curriculum stage per epoch, T_r = {size.latents}, K = {size.replay_k}; batch "
        f"{size.batch_size}, lr {size.lr}, {vision}; `vedas` adds SCF-VR (λ = 1, "
        f"W = 3) and routing depth scaling {size.routing}",
        '- scoring rule: `vedas` (strict: the last "the answer is X", one letter); chance is 25 %',
        f"- wall time: {elapsed / 60:.1f} min",
        "",
        "| method | accuracy | AR steps | latency ms/sample (prefill / latent / decode / total) "
        "| train s (latent, vedas: after cot's) |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        acc = f"{100 * r['accuracy']:.1f}%" + (f" ± {100 * r['accuracy_std']:.1f}" if spread else "")
        lat = r["latency_ms"]
        lines.append(
            f"| {r['method']} | {acc} | {r['ar_steps_mean']:.1f} | {lat['prefill']:.1f} / {lat['latent']:.1f}"
            f" / {lat['decode']:.1f} / **{lat['total']:.1f}** | {r['train_seconds']:.0f} |"
        )
    if latent_use:
        lines += [
            "",
            "Latent use: accuracy % with the fed-back latents as trained / zeroed / matched-norm noise / shuffled "
            "across samples, and with replay off at inference (drop = trained − condition, 95 % bootstrap "
            "interval over test questions), and the latent-count sweep:",
            "",
            *table_lines(latent_use),
        ]
    lines += one_run_lines(rows, size.preset, len(seeds))
    lines += ["", *[f"![{p}]({p})" for p in pngs], ""]
    (out / "report.md").write_text("\n".join(lines))


RUN_TO_RUN = "run_to_run.json"
"""Beside this module: the spread of method differences between training runs, measured by the ablation."""


def measured_spread(preset: str) -> dict[str, Any] | None:
    """The ablation's run-to-run spread for ``preset`` (:func:`vedas.experiments.ablation.run_to_run`), or None."""
    from importlib import resources

    path = resources.files("vedas.experiments") / RUN_TO_RUN
    if not path.is_file():
        return None
    spread = json.loads(path.read_text())
    return spread if spread.get("preset") == preset else None


def one_run_lines(
    rows: list[dict[str, Any]], preset: str, seeds: int, spread: dict[str, Any] | None = None
) -> list[str]:
    """What the method differences of this run can tell, against the spread the ablation measured between
    runs (``spread``: :func:`measured_spread` of the preset when not given)."""
    spread = spread or measured_spread(preset)
    if spread is None:
        return ["", f"No run-to-run spread has been measured on preset `{preset}`: a difference between two "
                "methods of one run says nothing about the methods."]  # fmt: skip
    acc = {r["method"]: r["accuracy"] for r in rows}
    lines = [
        "",
        f"What {'one run' if seeds == 1 else f'{seeds} seeds'} can tell: the ablation "
        f"({spread.get('source', 'vedas demo --ablation')}) "
        f"retrained these methods {spread['comparisons'][0]['runs']} times on preset `{preset}` (new `cot` seeds "
        "and data orders); a difference b − a of one run varies between reruns by the SD below, so one run's "
        "difference inside ±1.96 SD is within run-to-run variation, not evidence about the methods.",
        "",
        "| a | b | b − a here (points) | SD between runs | within run-to-run variation |",
        "|---|---|---|---|---|",
    ]
    for c in spread["comparisons"]:
        if c["a"] in acc and c["b"] in acc:
            d = 100 * (acc[c["b"]] - acc[c["a"]])
            within = abs(d) <= 100 * c["within"]
            lines.append(
                f"| {c['a']} | {c['b']} | {d:+.1f} | {100 * c['sd_run']:.1f} | "
                f"{'yes' if within else 'no: beyond ±' + format(100 * c['within'], '.1f')} |"
            )
    return lines


def run(args: argparse.Namespace) -> int:
    if args.merge and not args.ablation:
        raise UserError("--merge: merges ablation reports; give --ablation too")
    if args.ablation and args.merge:
        from vedas.experiments import merge

        return merge.run(args)
    if args.ablation:
        from vedas.experiments import ablation

        return ablation.run(args)
    size = sized(args)
    out = Path(args.out)
    seeds = list(range(args.seeds))
    t0 = time.perf_counter()
    per_seed, seed_dirs = [], []
    for seed in seeds:
        d = out if len(seeds) == 1 else out / f"seed{seed}"
        seed_dirs.append(d)
        per_seed.append(run_seed(seed, size, args.method, d, jobs=args.jobs))
    rows = summarise(per_seed, args.method)
    write_report(
        out, rows, size, seeds, seed_dirs, time.perf_counter() - t0, latent_use_rows(per_seed, args.method)
    )
    print((out / "report.md").read_text())
    return 0
