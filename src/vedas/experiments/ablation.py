"""``vedas demo --ablation``: the paper's ablation and two replay controls, from one trained ``cot``.

    vedas demo --ablation --out runs/ablation               # 3 seeds at the demo's full size
    vedas demo --ablation --quick --seeds 1 --out /tmp/abl  # a smoke run of a minute or two
    # two processes on two cores: each trains its seeds, the report takes every finished unit
    vedas demo --ablation --seeds 3 --only-seeds 0 1 --out runs/ablation &
    vedas demo --ablation --seeds 3 --only-seeds 2 --out runs/ablation

Per seed: the synthetic benchmark (the demo's preset), ``cot`` trained from the tiny random model
exactly as the demo trains it, and from that one ``cot`` checkpoint, through the same curriculum
(:data:`VARIANTS`):

==================  =====================================================================
``latent``          curriculum + attention-guided visual replay (IVT-LR-style; the base)
``latent+rds``      + routing depth scaling (no SCF-VR loss)
``latent+scfvr``    + the SCF-VR self-distillation loss (no routing)
``vedas``           both (the paper's method)
``random_replay``   ``latent`` replaying K random *unvisited* tokens (``replay_select: random``)
``no_replay``       ``latent`` with K = 0: latent passes over nothing but the latent
==================  =====================================================================

and, only when named in ``--variants``, the trained remedies (:data:`TRAINED_REMEDIES`) and the
options of issue 27 (:data:`OPTIONS`): ``latent+rowcol`` (``latent`` with a saliency option),
``vedas+hidden`` (``vedas`` with SCF-VR's ``hidden`` form), ``latent+hidden`` (``latent+scfvr`` with it) and
``latent+scfvr_clip`` (``latent+scfvr`` with F_SR clipped apart), each compared with the method it varies.

Each (variant, seed) is one unit: trained, evaluated (as the demo does: strict ``vedas`` scoring,
batch 16) and, for the latent variants, probed for latent use (:mod:`vedas.analysis.latent_use`'s
conditions, replay turned off at inference, and the latent-count sweep). Its result is written
atomically to ``<out>/seed<S>/<variant>/ablation_result.json`` as soon as it finishes; a rerun
skips the finished units. A finished ``vedas demo --out <out>/seed0`` run of the same size is taken
over (its ``cot``, ``latent``, ``vedas``: same recipe, checked against the saved config).
``<out>/ablation_settings.json`` holds the size; a rerun with other settings is refused, naming
the fields. The report (``ablation.md``/``ablation.json``) gives mean ± std over seeds, AR steps,
latency, the paired bootstrap difference for each comparison the paper makes
(:data:`COMPARISONS`), the latent-use table with its one-line verdict, and the paper's Table 3
rows as the paper reports them.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vedas.analysis.latent_use import CHANCE, interval_text, percent, table_lines
from vedas.analysis.latent_use import pooled as latent_use_row
from vedas.analysis.latent_use import probe as latent_use
from vedas.errors import UserError
from vedas.evaluation import bootstrap
from vedas.experiments import sizes
from vedas.experiments.jobs import run_graph
from vedas.files import atomic_write_text
from vedas.methods import PRESETS, Method


@dataclass(frozen=True)
class Variant:
    """One row of the ablation: the method preset trained from ``cot`` (and evaluated in its mode)."""

    preset: Method
    latent: tuple[tuple[str, Any], ...] = ()  # LatentConfig fields set on top (a trained remedy, an option)
    scfvr: tuple[tuple[str, Any], ...] = ()  # SCFVRConfig fields set on top (an SCF-VR form)
    help: str = ""

    @property
    def method(self) -> str:
        """The recipe's method and the evaluation mode."""
        return self.preset.mode


VARIANTS: dict[str, Variant] = {
    name: Variant(PRESETS[name], help=help)
    for name, help in (
        ("cot", "explicit CoT, from the tiny random model: the source of every other row"),
        ("latent", "curriculum + attention-guided replay (the base)"),
        ("latent+rds", PRESETS["latent+rds"].help),
        ("latent+scfvr", PRESETS["latent+scfvr"].help),
        ("vedas", "+ both (the paper's method)"),
        ("random_replay", PRESETS["random_replay"].help),
        ("no_replay", PRESETS["no_replay"].help),
    )
}
"""The paper's Table 3 grid and the two replay controls: rows of the method preset table."""
LATENT_VARIANTS = tuple(n for n, v in VARIANTS.items() if v.preset.latent)
TRAINED_REMEDIES: dict[str, Variant] = {
    "latent_nograd": Variant(
        PRESETS["latent"],
        latent=(("latent_grad", "none"),),
        help="latent trained with each fed-back latent detached",
    ),
    "latent+gap": Variant(
        PRESETS["latent"],
        latent=(("latent_norm", "ema"),),
        help="latent trained with GAP norm calibration on",
    ),
}
"""Remedies that change training: variants of ``latent``, run only when named in ``--variants``."""
OPTIONS: dict[str, Variant] = {
    "latent+rowcol": Variant(
        PRESETS["latent"],
        latent=(("replay_debias", "rowcol"),),
        help="latent with positional debiasing: the attention scores residualised on image row and column",
    ),
    "vedas+hidden": Variant(
        PRESETS["vedas"],
        scfvr=(("form", "hidden"), ("weight", 0.1), ("clip", "separate")),
        help="vedas with SCF-VR's hidden form (F_SR on the decoder's state after the chunk), lambda 0.1, "
        "F_SR clipped apart from the model",
    ),
    "latent+hidden": Variant(
        PRESETS["latent+scfvr"],
        scfvr=(("form", "hidden"), ("weight", 0.1), ("clip", "separate")),
        help="latent+scfvr with SCF-VR's hidden form, as vedas+hidden but without routing: what the crop's "
        "detail does through a loss that reaches the decoder",
    ),
    "latent+scfvr_clip": Variant(
        PRESETS["latent+scfvr"],
        scfvr=(("clip", "separate"),),
        help="latent+scfvr (the paper's form, lambda 1) with F_SR clipped apart from the model, so that F_SR's "
        "gradient cannot shrink the model's update through the shared clip norm",
    ),
}
"""The saliency option and the SCF-VR form docs/design.md#ablation chose (issue 27), each a variant of
the method it changes; run only when named in ``--variants``."""
ALL_VARIANTS = {**VARIANTS, **TRAINED_REMEDIES, **OPTIONS}

COMPARISONS: tuple[tuple[str, str, str], ...] = (
    ("latent", "latent+rds", "the paper's Table 3: Base → +RDS"),
    ("latent", "vedas", "the paper's Table 3: Base → +RDS & SCF-VR"),
    ("latent+rds", "vedas", "SCF-VR on top of RDS"),
    ("latent", "latent+scfvr", "SCF-VR alone"),
    ("random_replay", "latent", "attention-guided vs random replay"),
    ("no_replay", "latent", "replay vs none"),
    ("cot", "vedas", "latent steps vs the written CoT"),
)
"""(a, b, what): the paired difference b − a over test questions is reported with its 95 % interval."""
REMEDY_COMPARISONS: tuple[tuple[str, str, str], ...] = (
    ("latent", "latent_nograd", "trained remedy: latent_grad none"),
    ("latent", "latent+gap", "trained remedy: GAP norm calibration"),
)
"""Reported when the trained remedies ran (``--variants … latent_nograd latent+gap``)."""
OPTION_COMPARISONS: tuple[tuple[str, str, str], ...] = (
    ("latent", "latent+rowcol", "saliency option vs the paper's saliency"),
    ("random_replay", "latent+rowcol", "saliency option vs random replay"),
    ("vedas", "vedas+hidden", "SCF-VR form: hidden vs the paper's"),
    ("latent", "latent+hidden", "SCF-VR's hidden form alone"),
    ("latent+scfvr", "latent+hidden", "SCF-VR form without routing: hidden vs the paper's"),
    ("latent+scfvr", "latent+scfvr_clip", "SCF-VR's paper form: F_SR clipped apart vs jointly"),
    ("latent", "latent+scfvr_clip", "SCF-VR's paper form alone, F_SR clipped apart"),
)
"""Reported when the options ran (``--variants … latent+rowcol vedas+hidden latent+hidden latent+scfvr_clip``)."""

# As the paper reports them (its Table 3; accuracy %, models trained 16 epochs on a balanced subset).
PAPER_TABLE3: tuple[dict[str, Any], ...] = (
    {
        "model": "Qwen2-VL 2B",
        "base": (44.2, 62.4, 38.7),
        "rds": (47.6, 64.9, 40.4),
        "both": (51.2, 66.3, 40.9),
    },
    {
        "model": "Qwen2-VL 7B",
        "base": (63.7, 78.2, 52.3),
        "rds": (65.2, 80.5, 53.7),
        "both": (66.4, 81.3, 54.1),
    },
    {
        "model": "Qwen2.5-VL 3B",
        "base": (62.9, 76.5, 51.9),
        "rds": (64.5, 77.8, 52.9),
        "both": (65.3, 78.5, 53.6),
    },
    {
        "model": "Qwen2.5-VL 7B",
        "base": (71.1, 85.7, 56.3),
        "rds": (72.9, 87.2, 57.6),
        "both": (73.9, 88.2, 58.3),
    },
)
PAPER_BENCHMARKS = ("M3CoT", "ScienceQA", "GQA")
REMEDIES: dict[str, str] = {
    "gap_norm": "GAP norm calibration at inference: each fed-back latent rescaled to the mean visual "
    "input-embedding norm, measured on 256 training records",
    "pca_head": "GAP PCA latent head at inference, untrained: each latent projected onto the affine "
    "subspace holding 95 % of the visual input embeddings' variance (256 training records)",
    "tto": "test-time optimisation of the latents, weights frozen: stage1 (latent-visual alignment) "
    "then stage2 (confidence progression), 5 Adam steps each",
}
"""Remedies for unused latents, applied at inference to each seed's ``latent`` checkpoint (:data:`REMEDY_BASE`);
each is probed for latent use exactly as the variants are. Under ``tto`` a replaced latent is the starting
point TTO optimises from, so a drop says TTO's result depends on where it starts."""
REMEDY_BASE = "latent"
REMEDY_RECORDS = 256
COT_MIN = 0.9
"""A ``cot`` below this accuracy on its own benchmark failed to learn it (the healthy ones reach 97 %)."""
RESULT_FILE = "ablation_result.json"
SETTINGS_FILE = "ablation_settings.json"


# --------------------------------------------------------------------------- units


def atomic_write(path: Path, obj: Any) -> None:
    """Write JSON so a reader never sees half a file."""
    atomic_write_text(path, json.dumps(obj, indent=1))


def replicate_seed(seed: int, replicate: int) -> int:
    """The training seed of latent-phase replicate ``replicate`` from seed ``seed``'s ``cot``: data order,
    dropout and the new modules' initialisation (replicate 0 is the seed itself, as one seed always was)."""
    return seed if replicate == 0 else REPLICATE_STRIDE * replicate + seed


REPLICATE_STRIDE = 1000


def unit_path(seed_dir: Path, name: str, replicate: int = 0) -> Path:
    """Where unit (variant, replicate) of a seed lives: ``<variant>``, replicates ``rep<R>/<variant>``."""
    return seed_dir / name if replicate == 0 else seed_dir / f"rep{replicate}" / name


def variant_config(
    name: str,
    size: sizes.DemoSize,
    data: Path,
    seed_dir: Path,
    seed: int,
    cot: Path | None,
    replicate: int = 0,
):
    """The training config of variant ``name``: the demo's recipe with the variant's switches."""
    from vedas.train.config import for_method

    v = ALL_VARIANTS[name]
    if replicate and v.method == "cot":
        raise ValueError("cot has no replicates: every replicate continues from the seed's one cot")
    train_seed = replicate_seed(seed, replicate)
    cfg = sizes.train_config(
        v.method, size, data, seed_dir, train_seed, base=None if v.method == "cot" else cot
    )
    cfg = for_method(cfg, v.preset)
    return dataclasses.replace(
        cfg,
        latent=dataclasses.replace(cfg.latent, **dict(v.latent)),
        scfvr=dataclasses.replace(cfg.scfvr, **dict(v.scfvr)),
        run=dataclasses.replace(cfg.run, output_dir=str(unit_path(seed_dir, name, replicate))),
    )


def _comparable(d: dict[str, Any]) -> dict[str, Any]:
    """A training config as a dict without what may differ between equal runs (where, how often)."""
    return {k: v for k, v in d.items() if k != "run"}


def adoptable(cfg: Any, unit_dir: Path) -> dict[str, Any] | None:
    """The report of a finished ``vedas demo`` run in ``unit_dir`` trained with exactly ``cfg``, else None."""
    import yaml

    from vedas.config import to_dict

    report, saved = unit_dir / "report.json", unit_dir / "config.yaml"
    if not (report.is_file() and saved.is_file() and (unit_dir / "final").is_dir()):
        return None
    from vedas.config import from_dict
    from vedas.train.config import TrainConfig

    on_disk = to_dict(from_dict(TrainConfig, yaml.safe_load(saved.read_text())))
    if _comparable(on_disk) != _comparable(to_dict(cfg)):
        return None
    return json.loads(report.read_text())


def run_unit(
    name: str,
    seed: int,
    size: sizes.DemoSize,
    out: Path,
    cot: Path | None,
    replicate: int = 0,
    sweep_max: int | None = None,
) -> dict[str, Any]:
    """Train, evaluate and probe one (variant, seed, replicate), or load its saved result."""
    seed_dir = out / f"seed{seed}"
    where = unit_path(seed_dir, name, replicate)
    result_path = where / RESULT_FILE
    label = f"{name} seed {seed}" + (f" replicate {replicate}" if replicate else "")
    if result_path.is_file():
        print(f"ablation: {label} finished earlier ({result_path})")
        return json.loads(result_path.read_text())
    import vedas
    from vedas.data import load
    from vedas.evaluation.evaluate import evaluate
    from vedas.train.recipe import main as train_main

    data = seed_dir / "data"
    test = list(load("synthetic", path=str(data), split="test"))
    cfg = variant_config(name, size, data, seed_dir, seed, cot, replicate)
    load_before = os.getloadavg()[0]
    t0 = time.perf_counter()
    report = adoptable(cfg, where)
    adopted = report is not None
    if report is None:
        final = train_main(cfg)
        train_s = time.perf_counter() - t0
        vm = vedas.load(final)
        report = evaluate(
            vm, test, ALL_VARIANTS[name].method, batch_size=16, scoring="vedas", dataset="synthetic/test"
        )
        report.update(train_seconds=train_s, checkpoint=str(final))
    else:
        print(f"ablation: {label} taken over from the demo run in {where}")
        vm = vedas.load(report["checkpoint"])
    if name != "cot" and "latent_use" not in report:  # a demo run taken over has measured it already
        from vedas.analysis.replay import SynthRelevance

        report["latent_use"] = latent_use(
            vm, test, ALL_VARIANTS[name].method, seed, sweep_max=sweep_max, relevance=SynthRelevance(data)
        )
    report.update(
        variant=name,
        seed=seed,
        replicate=replicate,
        train_seed=cfg.optim.seed,
        adopted_from_demo=adopted,
        unit_seconds=time.perf_counter() - t0,
        load_average=[load_before, os.getloadavg()[0]],
    )
    atomic_write(result_path, report)
    print(
        f"ablation: {label}: accuracy {report['accuracy']:.3f}, AR steps {report['ar_steps_mean']:.1f}, "
        f"latency {report['latency_ms']['total']:.1f} ms, {report['unit_seconds']:.0f} s"
    )
    return report


def apply_remedy(name: str, vm: Any, train: list[Any]) -> Any:
    """Switch remedy ``name`` on in ``vm`` (in memory only); returns the ``tto`` setting to evaluate with."""
    from vedas.method import gap

    if name == "gap_norm":
        gap.calibrate_norms(vm, train)
        vm.config = dataclasses.replace(vm.config, latent_norm="ema")
    elif name == "pca_head":
        gap.enable_pca_head(vm, gap.visual_embeddings(vm, train), share=0.95)
        vm.config = dataclasses.replace(vm.config, latent_head="pca")
    elif name == "tto":
        from vedas.method.tto import TTOConfig

        return TTOConfig(stages=["stage1", "stage2"], steps=5)
    else:
        raise UserError(f"remedy {name!r}: choose one of {list(REMEDIES)}")
    return None


def run_remedy(name: str, seed: int, out: Path, checkpoint: Path) -> dict[str, Any]:
    """Remedy ``name`` on one seed's ``latent`` checkpoint, probed for latent use; saved like a unit."""
    unit_dir = out / f"seed{seed}" / f"remedy-{name}"
    result_path = unit_dir / RESULT_FILE
    if result_path.is_file():
        print(f"ablation: remedy {name} seed {seed} finished earlier ({result_path})")
        return json.loads(result_path.read_text())
    import vedas
    from vedas.data import load

    data = out / f"seed{seed}" / "data"
    test = list(load("synthetic", path=str(data), split="test"))
    train = list(load("synthetic", path=str(data), split="train"))[:REMEDY_RECORDS]
    load_before, t0 = os.getloadavg()[0], time.perf_counter()
    vm = vedas.load(checkpoint)
    tto = apply_remedy(name, vm, train)
    use = latent_use(vm, test, VARIANTS[REMEDY_BASE].method, seed, sweep_max=0, tto=tto)
    trained = use["conditions"]["trained"]
    report = {
        "remedy": name,
        "seed": seed,
        "checkpoint": str(checkpoint),
        "accuracy": trained["accuracy"],
        "latent_use": use,
        "unit_seconds": time.perf_counter() - t0,
        "load_average": [load_before, os.getloadavg()[0]],
    }
    atomic_write(result_path, report)
    print(
        f"ablation: remedy {name} seed {seed}: accuracy {report['accuracy']:.3f}, {report['unit_seconds']:.0f} s"
    )
    return report


# --------------------------------------------------------------------------- settings


def synth_settings(size: sizes.DemoSize) -> dict[str, Any]:
    """The preset's synthetic config as ``synth_config.json`` records it (settings left at their default
    are not written, so an ablation started before a setting existed still resumes)."""
    from vedas.data import synth

    return synth.config_dict(size.synth_config())


def settings(size: sizes.DemoSize) -> dict[str, Any]:
    return {
        "size": json.loads(json.dumps(dataclasses.asdict(size))),
        "synth": synth_settings(size),
    }


def check_settings(out: Path, wanted: dict[str, Any]) -> None:
    """Record the settings on the first run; refuse a rerun with other ones, naming each field."""
    path = out / SETTINGS_FILE
    if not path.is_file():
        atomic_write(path, wanted)
        return
    saved = json.loads(path.read_text())
    diffs = [
        f"{section}.{k}: {saved.get(section, {}).get(k)!r} there, {v!r} now"
        for section, fields in wanted.items()
        for k, v in fields.items()
        if saved.get(section, {}).get(k) != v
    ]
    if diffs:
        raise UserError(
            f"--out: {path} holds an ablation of other settings ({'; '.join(diffs)}); "
            "use another --out or the same settings"
        )


# --------------------------------------------------------------------------- summary


def _correct(report: dict[str, Any]) -> dict[str, float]:
    return {s["id"]: float(bool(s["correct"])) for s in report["per_sample"]}


def paired(
    results: dict[str, dict[int, dict[str, Any]]], a: str, b: str, key: Any = None
) -> dict[str, Any] | None:
    """The pooled paired difference b − a over every (seed, question) both have; ``key`` picks the outcomes."""
    key = key or _correct
    xs, ys = [], []
    for seed in sorted(set(results.get(a, {})) & set(results.get(b, {}))):
        ca, cb = key(results[a][seed]), key(results[b][seed])
        for q in sorted(set(ca) & set(cb)):
            xs.append(ca[q])
            ys.append(cb[q])
    return bootstrap.paired_difference(xs, ys) if xs else None


def run_accuracies(m: dict[str, Any]) -> dict[tuple[int, int], float]:
    """A method row's accuracy per run ``(seed, replicate)`` (a report saved before replicates: one per seed)."""
    runs = m.get("runs") or [[s, 0] for s in m["seeds"]]
    return {(int(r[0]), int(r[1])): a for r, a in zip(runs, m["accuracies"])}


SIZED_FOR = (3.0, 5.0, 7.0)
"""Differences (points) the paper's Table 3 reports; each comparison says how many seeds would find them."""


def shared_source(name: str, runs: dict[Any, Any], other: dict[Any, Any]) -> dict[Any, Any]:
    """``cot``'s runs paired with every replicate of ``other``: each replicate continues from the
    seed's one ``cot``, so ``cot`` (trained once per seed, replicate 0) is the same for all of them.
    Any other variant's runs are returned as they are."""
    if name != "cot" or not all(isinstance(k, tuple) for k in runs):
        return runs
    return {k: runs[(k[0], 0)] for k in other if isinstance(k, tuple) and (k[0], 0) in runs}


def with_seed_level(methods: list[dict[str, Any]], comparisons: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each comparison with its seed-level interval and verdicts.

    ``difference``/``low``/``high`` stay the question-level bootstrap (models fixed);
    ``seed_level`` is :func:`bootstrap.nested_level` over the runs both variants have (replicates of
    one seed averaged, then the paired t over seeds; the spread within and between ``cot`` seeds), and
    ``beyond_interval`` follows it (``beyond_question_interval`` is the old, question-level verdict;
    None where the comparison has no question-level interval: a report merged from saved ones).
    ``seeds_needed``: for each of :data:`SIZED_FOR`, the seeds (at this design's replicates per seed)
    that find it at 80 % power. With one seed there is no seed-level interval and no verdict (None).
    """
    acc = {m["method"]: run_accuracies(m) for m in methods}
    out = []
    for c in comparisons:
        a, b = acc.get(c["a"], {}), acc.get(c["b"], {})
        seed = bootstrap.nested_level(shared_source(c["a"], a, b), b)
        needed = None
        if seed is not None:
            reps = max(seed["replicates"].values())
            needed = {
                f"{d:g}": bootstrap.seeds_needed(seed["sd_between"], seed["sd_within"], reps, d / 100)
                for d in SIZED_FOR
            }
        out.append(
            {
                **c,
                "seed_level": seed,
                "seeds_needed": needed,
                "beyond_interval": None if seed is None else bootstrap.beyond(seed),
                "beyond_question_interval": bootstrap.beyond(c) if "low" in c else None,
            }
        )
    return out


def summary_row(name: str, reps: dict[Any, dict[str, Any]]) -> dict[str, Any]:
    """One variant over its runs, keyed ``(seed, replicate)`` (a bare seed: replicate 0)."""
    runs = sorted(reps)
    keys = [r if isinstance(r, tuple) else (r, 0) for r in runs]
    acc = [reps[r]["accuracy"] for r in runs]
    seeds = sorted({k[0] for k in keys})
    seed_accuracy = [statistics.mean(a for k, a in zip(keys, acc) if k[0] == s) for s in seeds]
    return {
        "method": name,
        "accuracy": statistics.mean(acc),
        "std": statistics.stdev(acc) if len(acc) > 1 else 0.0,
        "std_seed_means": statistics.stdev(seed_accuracy) if len(seed_accuracy) > 1 else 0.0,
        "seeds": seeds,
        "seed_accuracy": seed_accuracy,
        "runs": [list(k) for k in keys],
        "accuracies": acc,
        **_run_means([reps[r] for r in runs]),
    }


def _run_means(reports: list[dict[str, Any]]) -> dict[str, Any]:
    """Steps, latency, times and per-question-type accuracy of a row, mean over its runs."""
    categories = [set(r.get("per_category") or {}) for r in reports]
    return {
        "ar_steps_mean": statistics.mean(r["ar_steps_mean"] for r in reports),
        "latency_ms": {
            k: statistics.mean(r["latency_ms"][k] for r in reports)
            for k in ("prefill", "latent", "decode", "total")
        },
        "train_seconds": statistics.mean(r.get("train_seconds", 0.0) for r in reports),
        "unit_seconds": [r["unit_seconds"] for r in reports],
        "n": reports[0]["n"],
        "per_category": {  # the synthetic templates: diff (3 steps) and net (4 steps), mean over runs
            c: statistics.mean(r["per_category"][c]["accuracy"] for r in reports)
            for c in sorted(set.intersection(*categories))
        },
    }


def run_to_run(summary: dict[str, Any], preset: str) -> dict[str, Any]:
    """What one training run can tell on this preset: per comparison, the SD of a single run's
    difference b − a between reruns (a new ``cot`` seed and data order: √(sd_between² + sd_within²))
    and the size a one-run difference must exceed to stand out of that spread (1.96 SD). The demo,
    which trains one seed, quotes it (``vedas/experiments/run_to_run.json`` holds the committed one)."""
    rows = []
    for c in summary["comparisons"]:
        s = c.get("seed_level")
        if s is None:
            continue
        sd = float((s["sd_between"] ** 2 + (s["sd_within"] or 0.0) ** 2) ** 0.5)
        rows.append({"a": c["a"], "b": c["b"], "sd_run": sd, "within": 1.96 * sd, "runs": s["runs"]})
    return {"preset": preset, "comparisons": rows}


def excluded_cots(results: dict[str, dict[Any, dict[str, Any]]], cot_min: float) -> list[dict[str, Any]]:
    """The seeds whose ``cot`` scored below ``cot_min`` on its own benchmark: nothing continues from them."""
    return [
        {"seed": k[0] if isinstance(k, tuple) else k, "accuracy": r["accuracy"]}
        for k, r in sorted(results.get("cot", {}).items())
        if r["accuracy"] < cot_min
    ]


def summarise(
    results: dict[str, dict[Any, dict[str, Any]]],
    remedies: dict[str, dict[int, dict[str, Any]]] | None = None,
    cot_min: float = 0.0,
) -> dict[str, Any]:
    """Rows, comparisons and latent use over the runs; a ``cot`` below ``cot_min`` is listed under
    ``excluded_cots`` and left out of every row (its seed trained nothing else)."""
    excluded = excluded_cots(results, cot_min)
    bad = {e["seed"] for e in excluded}
    results = {
        n: {k: r for k, r in reps.items() if (k[0] if isinstance(k, tuple) else k) not in bad}
        for n, reps in results.items()
    }
    names = [n for n in ALL_VARIANTS if results.get(n)]
    methods = [summary_row(n, results[n]) for n in names]
    comparisons = []
    for a, b, what in COMPARISONS + REMEDY_COMPARISONS + OPTION_COMPARISONS:
        d = paired({a: shared_source(a, results.get(a, {}), results.get(b, {})), b: results.get(b, {})}, a, b)
        if d is not None:
            comparisons.append({"a": a, "b": b, "what": what, **d})
    return {
        "cot_min": cot_min,
        "excluded_cots": excluded,
        "methods": methods,
        "comparisons": with_seed_level(methods, comparisons),
        "latent_use": [latent_use_row(n, results[n]) for n in names if ALL_VARIANTS[n].preset.latent],
        "remedies": [
            {**latent_use_row(r, reps), "remedy": r, "applied_to": REMEDY_BASE, "help": REMEDIES[r]}
            for r in REMEDIES
            if (reps := (remedies or {}).get(r))
        ],
        "paper_table3": [
            {"model": r["model"], **{k: dict(zip(PAPER_BENCHMARKS, r[k])) for k in ("base", "rds", "both")}}
            for r in PAPER_TABLE3
        ],
    }


# --------------------------------------------------------------------------- report


def remedy_lines(summary: dict[str, Any]) -> list[str]:
    """The remedies' latent-use table beside the base variant's row (nothing when none ran)."""
    if not summary.get("remedies"):
        return []
    base = next((u for u in summary["latent_use"] if u["method"] == REMEDY_BASE), None)
    lines = [
        "",
        f"Remedies on the latent-use line (each applied at inference to the `{REMEDY_BASE}` checkpoint of "
        "every seed; accuracy %, drop = with the remedy's latents − replaced):",
        "",
    ]
    base_row = [{**base, "label": f"none (`{REMEDY_BASE}` as trained)"}] if base else []
    rem = [{**u, "label": u["remedy"]} for u in summary["remedies"]]
    lines += table_lines(base_row + rem, "remedy", sweep=False)
    return [*lines, "", *[f"- `{u['remedy']}`: {u['help']}" for u in summary["remedies"]]]


def table3_lines(summary: dict[str, Any], rows: dict[str, dict[str, Any]]) -> list[str]:
    """The paper's Table 3 as it reports it, and our Base → +RDS → +RDS & SCF-VR row under it."""
    lines = [
        "",
        "The paper's Table 3 as the paper reports it (accuracy %, real benchmarks; ours is the synthetic "
        "benchmark above, so compare the signs and sizes of the steps, not the levels):",
        "",
        "| model | Base (M3CoT / ScienceQA / GQA) | +RDS | +RDS & SCF-VR |",
        "|---|---|---|---|",
    ]
    for p in summary["paper_table3"]:
        cells = [" / ".join(f"{v:.1f}" for v in p[k].values()) for k in ("base", "rds", "both")]
        lines.append(f"| {p['model']} | {' | '.join(cells)} |")
    if "latent" in rows:
        ours = [rows[n] for n in ("latent", "latent+rds", "vedas") if n in rows]
        lines.append(
            f"| ours (tiny Qwen2-VL, synthetic) | {' | '.join(percent(r['accuracy']) for r in ours)} |"
        )
    return lines


def comparison_lines(comparisons: list[dict[str, Any]]) -> list[str]:
    """The paired differences with both intervals; the verdict is the seed-level one."""
    lines = [
        "",
        "Paired differences (b − a, accuracy points). *Seed level*: the latent-phase replicates of each seed "
        "averaged, then a paired t over the seeds (each seed its own data, tokenizer, initialisation and `cot`): "
        "the interval that includes run-to-run variance; the smallest difference this design detects at 80 % "
        "power; the spread of the difference between replicates of one `cot` (within) and between `cot` seeds "
        "(between); how many seeds (at this many replicates each) would find 3 / 5 / 7 points. The verdict "
        "follows the seed-level interval. *Question level*: 95 % bootstrap over the pooled test questions with "
        "the trained models fixed (10,000 resamples); it leaves out run-to-run variance and is no evidence "
        "about a method on its own.",
        "",
        "| a | b | what | per seed | b − a, seed level [95 %] | detectable (80 %) | SD within / between "
        "| seeds for 3 / 5 / 7 | beyond run-to-run variation | question level [95 %] |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in comparisons:
        s = c.get("seed_level")
        if s is None:
            seed_cells = "– | – | – | – | – | – (one seed)"
        else:
            per_seed = " / ".join(f"{100 * x:+.1f}" for x in s["per_seed"])
            verdict = "yes" if c["beyond_interval"] else "no"
            within = "–" if s.get("sd_within") is None else f"{100 * s['sd_within']:.1f}"
            between = f"{100 * s['sd_between']:.1f}" if "sd_between" in s else "–"
            needed = " / ".join(
                ">1000" if n is None else str(n) for n in (c.get("seeds_needed") or {}).values()
            )
            seed_cells = (
                f"{per_seed} | {interval_text(s)} | {100 * s['detectable_80']:.1f} | {within} / {between} | "
                f"{needed or '–'} | {verdict}"
            )
        question = interval_text(c) if "low" in c else "– (merged reports)"
        lines.append(f"| {c['a']} | {c['b']} | {c['what']} | {seed_cells} | {question} |")
    return lines


def run_cells(r: dict[str, Any]) -> str:
    """A row's accuracy per run: ``s<S> a / b`` for the replicates of each seed."""
    by_seed: dict[int, list[str]] = {}
    for (seed, _), a in run_accuracies(r).items():
        by_seed.setdefault(seed, []).append(percent(a))
    return " · ".join(f"s{seed} {' / '.join(v)}" for seed, v in sorted(by_seed.items()))


def report_lines(summary: dict[str, Any], meta: dict[str, Any]) -> list[str]:
    rows = {r["method"]: r for r in summary["methods"]}
    lines = [
        "# vedas ablation: one trained `cot`, the paper's variants and two replay controls",
        "",
        f"- machine: {meta['machine']}; 1-min load average while the units ran "
        f"{meta['units_load_average'][0]:.1f}–{meta['units_load_average'][1]:.1f}",
        f"- preset `{meta['preset']}`: {meta['synth']}",
        f"- sizes: {meta['size_line']}",
        f"- seeds {meta['seeds']}; wall time of the units (train + evaluate + latent use), summed: "
        f"{meta['units_seconds_total'] / 60:.1f} min; of this invocation {meta['elapsed_seconds'] / 60:.1f} min "
        f"(units finished earlier are loaded, not rerun); scoring `vedas` (strict), chance 25 %",
        *merged_lines(meta),
        "",
        "| variant | accuracy % (mean ± std over runs) | per seed: its runs | per question type | AR steps "
        "| latency ms/sample | train s |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in summary["methods"]:
        kinds = ", ".join(f"{c} {percent(a)}" for c, a in r.get("per_category", {}).items()) or "–"
        lines.append(
            f"| {r['method']} | **{percent(r['accuracy'])}** ± {percent(r['std'])} | "
            f"{run_cells(r)} | {kinds} | {r['ar_steps_mean']:.1f} | "
            f"{r['latency_ms']['total']:.1f} | {r['train_seconds']:.0f} |"
        )
    lines += [
        f"- `cot` of seed {e['seed']}: {percent(e['accuracy'])} on its own benchmark, below the "
        f"{percent(summary['cot_min'])} a healthy `cot` reaches: excluded (nothing was trained from it)"
        for e in summary.get("excluded_cots", [])
    ]
    lines += comparison_lines(summary["comparisons"])
    lines += [
        "",
        "Latent use (accuracy % with the fed-back latents as trained / zeroed / matched-norm noise / shuffled "
        "across samples; replay off (K = 0 at inference: the chunk layout changes too); replay placeholder "
        "(K tokens at the same positions and weights, each the sample's mean visual embedding: the layout stays, "
        "the content goes); replay oracle / anti (the synthetic layout's question-relevant cells first / empty "
        "cells first). Drop = trained − condition, with its seed-level interval (s: replicates averaged, "
        "paired t over seeds) where there are two or more seeds, else the question-level one (q); the "
        "verdicts follow the interval shown):",
        "",
        *table_lines(summary["latent_use"], "variant"),
    ]
    lines += remedy_lines(summary)
    lines += table3_lines(summary, rows)
    return [*lines, ""]


def _chosen(args: argparse.Namespace) -> tuple[list[str], list[str], list[int], list[int]]:
    """The variants, remedies, seeds and this process's seeds the arguments ask for; errors name the flag."""
    wanted = list(args.variants or VARIANTS)
    unknown = [v for v in wanted if v not in ALL_VARIANTS]
    if unknown:
        raise UserError(f"--variants: unknown {unknown}; choose from {list(ALL_VARIANTS)}")
    remedies_wanted = [] if args.remedies is None else list(args.remedies or REMEDIES)
    unknown = [r for r in remedies_wanted if r not in REMEDIES]
    if unknown:
        raise UserError(f"--remedies: unknown {unknown}; choose from {list(REMEDIES)}")
    seeds = list(range(args.seeds))
    only = set(args.only_seeds or seeds)
    if not only <= set(seeds):
        raise UserError(
            f"--only-seeds: {sorted(only - set(seeds))} not among --seeds {args.seeds} (0…{args.seeds - 1})"
        )
    if args.report_only:
        return wanted, remedies_wanted, seeds, []  # every seed is "another process's": read, never train
    return wanted, remedies_wanted, seeds, [s for s in seeds if s in only]


def run(args: argparse.Namespace) -> int:
    from vedas.data import synth

    size = dataclasses.replace(sizes.sized(args), vision_seed=args.vision_seed)
    out = Path(args.out)
    wanted, remedies_wanted, seeds, mine = _chosen(args)
    replicates = args.replicates
    cot_min = args.cot_min if args.cot_min is not None else (0.0 if args.quick else COT_MIN)
    if replicates < 1:
        raise UserError(f"--replicates: must be at least 1, got {replicates}")
    if args.report_only and not (out / SETTINGS_FILE).is_file():
        raise UserError(
            f"--report-only: {out} holds no ablation (no {SETTINGS_FILE}); give an ablation's --out"
        )
    check_settings(out, settings(size))
    t0, load_start = time.perf_counter(), os.getloadavg()[0]
    results: dict[str, dict[Any, dict[str, Any]]] = {}
    remedies: dict[str, dict[int, dict[str, Any]]] = {}
    for seed in seeds:
        if seed not in mine:  # another process runs it: take what it has finished
            finished(out, seed, ["cot", *wanted], results, replicates)
            finished(out, seed, [f"remedy-{r}" for r in remedies_wanted], remedies, prefix="remedy-")
            continue
        data = out / f"seed{seed}" / "data"
        if not (data / "test.jsonl").is_file():
            synth.write(
                data, train=size.train, test=size.test, seed=seed, cfg=size.synth_config(), progress=True
            )

    def after(key: Any, report: dict[str, Any]) -> list[Any]:
        name, seed, rep = key
        if name == "cot":  # every variant and replicate continues from this one checkpoint
            if report["accuracy"] < cot_min:
                print(
                    f"ablation: cot seed {seed} scored {percent(report['accuracy'])} %, below --cot-min "
                    f"{percent(cot_min)} %: excluded, nothing is trained from it"
                )
                return []
            ckpt = Path(report["checkpoint"])
            return [
                ((v, seed, r), run_unit, (v, seed, size, out, ckpt, r, args.sweep_max))
                for r in range(replicates)
                for v in wanted
                if v != "cot"
            ]
        if name == REMEDY_BASE and rep == 0:
            ckpt = Path(report["checkpoint"])
            return [((f"remedy:{r}", seed, 0), run_remedy, (r, seed, out, ckpt)) for r in remedies_wanted]
        return []

    roots = [(("cot", seed, 0), run_unit, ("cot", seed, size, out, None)) for seed in mine]
    text = ""
    for (name, seed, rep), report in run_graph(roots, after, args.jobs, priority=unit_priority):
        if name.startswith("remedy:"):
            remedies.setdefault(name.removeprefix("remedy:"), {})[seed] = report
        else:
            results.setdefault(name, {})[(seed, rep)] = report
        text = write_report(out, results, remedies, size, t0, load_start, cot_min)
    if not roots:  # --report-only, or every seed taken by other processes
        if not results:
            raise UserError(f"--report-only: no unit of {wanted} has finished under {out}; nothing to report")
        text = write_report(out, results, remedies, size, t0, load_start, cot_min)
    print(text)
    return 0


def unit_priority(key: tuple[str, int, int]) -> tuple[float, int]:
    """The order units start in when a worker frees: every ``cot`` first, then replicate 0 of every
    seed, then the remedies, then replicate 1, …: an ablation stopped early has whole replicates."""
    name, seed, rep = key
    if name == "cot":
        return (-1.0, seed)
    return (rep + (0.5 if name.startswith("remedy:") else 0.0), seed)


def finished(
    out: Path,
    seed: int,
    names: list[str],
    results: dict[str, dict[Any, dict[str, Any]]],
    replicates: int = 0,
    prefix: str = "",
) -> None:
    """Add the units of ``seed`` already finished on disk to ``results`` (nothing is trained), keyed by
    their directory name less ``prefix``: by ``(seed, replicate)`` for ``replicates`` ≥ 1 (``cot``: its
    replicate 0 only), else by seed."""
    for name in names:
        for rep in range(max(1, replicates) if name != "cot" else 1):
            path = unit_path(out / f"seed{seed}", name, rep) / RESULT_FILE
            if path.is_file():
                key = (seed, rep) if replicates else seed
                results.setdefault(name.removeprefix(prefix), {})[key] = json.loads(path.read_text())


def write_report(
    out: Path,
    results: dict[str, dict[int, dict[str, Any]]],
    remedies: dict[str, dict[int, dict[str, Any]]],
    size: sizes.DemoSize,
    t0: float,
    load_start: float,
    cot_min: float = 0.0,
) -> str:
    """``ablation.json`` and ``ablation.md`` over the seeds finished so far (those with a unit in
    ``results``); returns the markdown."""
    summary = summarise(results, remedies, cot_min)
    seeds = sorted({k[0] if isinstance(k, tuple) else k for reps in results.values() for k in reps})
    meta = {
        "machine": sizes.machine(),
        "load_start": load_start,
        "load_end": os.getloadavg()[0],
        "preset": size.preset,
        "synth": synth_settings(size),
        "size_line": (
            f"{size.train} train / {size.test} test; tiny {size.arch} {size.tiny_model_args()}; cot {size.epochs} epochs, "
            f"each variant {size.latent_epochs} more from cot; T_r = {size.latents}, K = {size.replay_k}; "
            f"batch {size.batch_size}, lr {size.lr}"
        ),
        "seeds": seeds,
        "elapsed_seconds": time.perf_counter() - t0,
        "units_seconds_total": sum(
            r["unit_seconds"]
            for group in (results, remedies)
            for reps in group.values()
            for r in reps.values()
        ),
        "units_load_average": [
            f(x for reps in results.values() for r in reps.values() for x in r["load_average"])
            for f in (min, max)
        ],
        "settings": settings(size),
    }
    return save(out, summary, meta)


def save(out: Path, summary: dict[str, Any], meta: dict[str, Any]) -> str:
    """Write ``ablation.json`` (with its run-to-run spread), ``ablation.md`` and ``ablation.png`` under
    ``out``; returns the markdown."""
    atomic_write(
        out / "ablation.json", {**summary, "run_to_run": run_to_run(summary, meta["preset"]), **meta}
    )
    text = "\n".join(report_lines(summary, meta))
    if summary["methods"]:
        plot(summary, out / "ablation.png")
        text += "\n![ablation: accuracy per variant and paired differences](ablation.png)\n"
    atomic_write_text(out / "ablation.md", text)
    return text


def merged_lines(meta: dict[str, Any]) -> list[str]:
    """The report's provenance line when :mod:`vedas.experiments.merge` built it from saved reports."""
    if not meta.get("merged_from"):
        return []
    parts = "; ".join(f"`{m['file']}` (seeds {m['seeds']})" for m in meta["merged_from"])
    if meta.get("question_level", True):
        return [f"- rebuilt from the saved report {parts}"]
    return [
        f"- merged from the saved reports {parts}: the rows, the seed-level intervals and every verdict "
        "are recomputed over the union of runs; question-level intervals need per-question outcomes, "
        "which a saved report does not hold, so this report has none"
    ]


def plot(summary: dict[str, Any], path: Path) -> Path:
    """Accuracy per variant (mean ± std, one dot per seed) and the paired differences with their intervals."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, comps = summary["methods"], summary["comparisons"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.8), gridspec_kw={"width_ratios": [1.1, 1]})
    x = range(len(rows))
    left.bar(
        x,
        [100 * r["accuracy"] for r in rows],
        yerr=[100 * r["std"] for r in rows],
        capsize=3,
        color="#7fa7d9",
    )
    for i, r in enumerate(rows):
        left.plot([i] * len(r["accuracies"]), [100 * a for a in r["accuracies"]], "k.", ms=4)
    left.axhline(100 * CHANCE, color="grey", ls=":", lw=1, label="chance")
    left.set_xticks(list(x), [r["method"] for r in rows], rotation=30, ha="right", fontsize=8)
    left.set_ylabel("accuracy % (mean ± std; dots: runs)")
    left.set_ylim(0, 105)
    left.legend(fontsize=7, loc="lower right")
    y = range(len(comps))

    def bars(intervals: list[dict[str, Any]], shift: float, **style: Any) -> None:
        right.errorbar(
            [100 * c["difference"] for c in intervals],
            [i + shift for i in y],
            xerr=[
                [100 * (c["difference"] - c["low"]) for c in intervals],
                [100 * (c["high"] - c["difference"]) for c in intervals],
            ],
            fmt="o",
            capsize=3,
            **style,
        )

    if all("low" in c for c in comps):  # a report merged from saved ones has no question-level interval
        bars(comps, 0.15, color="#bbbbbb", ms=3, label="question level (models fixed)")
    if all(c.get("seed_level") for c in comps):
        bars(
            [c["seed_level"] for c in comps], -0.15, color="#c0504d", label="seed level (paired t over runs)"
        )
    right.axvline(0, color="grey", lw=1)
    right.set_yticks(list(y), [f"{c['b']} − {c['a']}" for c in comps], fontsize=8)
    right.invert_yaxis()
    right.legend(fontsize=7, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=2, frameon=False)
    right.set_xlabel("paired difference, accuracy points (95 % intervals)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
