"""Make the pictures of docs/analysis.md: every ``vedas analyze`` command on one tiny trained checkpoint.

    .venv/bin/python scripts/analysis_pictures.py                 # writes docs/images/analysis_*.png
    .venv/bin/python scripts/analysis_pictures.py --work /tmp/ap --train 128 --epochs 8
    .venv/bin/python scripts/analysis_pictures.py --demo runs/demo    # the demo's vedas checkpoint and data

Steps: write the synthetic benchmark, train ``configs/synthetic_tiny.yaml`` (the tiny random
Qwen2-VL, method ``vedas``) on it — or, with ``--demo DIR``, take the checkpoint, data and
resolved training config of a finished ``vedas demo`` (``DIR/vedas/final``, ``DIR/data``,
``DIR/vedas/config.yaml``) — run ``vedas analyze gradients | crops | latents |
latent-use`` through the real command line, and copy each figure to
``docs/images/analysis_<name>.png`` (the latent map from the ``--normalize unit`` run; palette-quantised, and shrunk if needed, to stay under
200 KB). The numbers behind the figures stay in ``<work>/analysis/*/*.json``; the script
prints the ones docs/analysis.md quotes. Offline, CPU only; a few minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import yaml
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
MAX_BYTES = 200_000

FIGURES = {
    "gradients/token_grad_heatmap.png": "analysis_gradients_tokens.png",
    "gradients/token_grad_means.png": "analysis_gradients_means.png",
    "gradients/lora_nuclear_norms.png": "analysis_gradients_nuclear.png",
    "crops/crops.png": "analysis_crops.png",
    "latents_unit/latents.png": "analysis_latents.png",
    "latent_use/latent_use.png": "analysis_latent_use.png",
}


def shrink_png(src: Path, dest: Path, limit: int = MAX_BYTES) -> int:
    """Copy ``src`` to ``dest`` as a 256-colour palette PNG, downscaled until it is under ``limit`` bytes."""
    with Image.open(src) as im:
        image = im.convert("RGB")
    scale = 1.0
    while True:
        size = (round(image.width * scale), round(image.height * scale))
        out = image.resize(size, Image.Resampling.LANCZOS) if scale < 1 else image
        out.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(dest, format="PNG", optimize=True)
        n = dest.stat().st_size
        if n < limit or scale < 0.3:
            return n
        scale *= 0.85


def write_config(work: Path, synth_dir: Path, args: argparse.Namespace) -> Path:
    cfg = yaml.safe_load((ROOT / "configs/synthetic_tiny.yaml").read_text())
    cfg["data"]["path"] = str(synth_dir)
    cfg["optim"]["epochs"] = args.epochs
    cfg["optim"]["batch_size"] = args.batch_size
    cfg["run"] = {"output_dir": str(work / "run"), "log_every": 10, "progress": True, "overwrite": True}
    path = work / "config.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def cli(*argv: str) -> None:
    from vedas.cli import main

    print("$ vedas " + " ".join(argv), flush=True)
    t0 = time.perf_counter()
    code = main(list(argv))
    if code != 0:
        sys.exit(f"vedas {argv[0]} {argv[1]} failed with status {code}")
    print(f"  ({time.perf_counter() - t0:.1f} s)", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--work", default="runs/analysis_pictures", help="scratch folder (data, run, outputs)"
    )
    parser.add_argument("--images", default=str(ROOT / "docs/images"), help="where the pictures go")
    parser.add_argument(
        "--demo",
        default=None,
        help="a finished `vedas demo` output dir: use its vedas checkpoint, data and config",
    )
    parser.add_argument("--train", type=int, default=256, help="synthetic training records (default: 256)")
    parser.add_argument("--test", type=int, default=64, help="synthetic test records (default: 64)")
    parser.add_argument("--epochs", type=int, default=12, help="training epochs (default: 12)")
    parser.add_argument("--batch-size", type=int, default=16, help="training batch size (default: 16)")
    parser.add_argument(
        "--grad-steps", type=int, default=24, help="steps of `analyze gradients` (default: 24)"
    )
    args = parser.parse_args()

    from vedas.data import synth
    from vedas.train.recipe import load_config
    from vedas.train.recipe import main as train

    work = Path(args.work)
    if args.demo:
        demo = Path(args.demo)
        synth_dir, final = demo / "data", demo / "vedas" / "final"
        config = demo / "vedas" / "config.yaml"
        for path in (synth_dir / "test.jsonl", final / "config.yaml", config):
            if not path.is_file():
                sys.exit(f"--demo {demo}: {path} is missing; run `vedas demo --out {demo}` first")
        args.test = sum(1 for _ in (synth_dir / "test.jsonl").open())
    else:
        synth_dir = work / "synth"
        if not (synth_dir / "test.jsonl").is_file():
            synth.write(synth_dir, train=args.train, test=args.test, seed=0, progress=True)
        config = write_config(work, synth_dir, args)
        final = work / "run" / "final"
    if not final.is_dir():
        t0 = time.perf_counter()
        train(load_config(str(config), []))
        print(f"trained in {time.perf_counter() - t0:.0f} s")
    out = work / "analysis"
    data = f"synthetic:{synth_dir}"
    ckpt = ("--checkpoint", str(final), "--data", data)
    cli(
        "analyze",
        "gradients",
        "--config",
        str(config),
        "--steps",
        str(args.grad_steps),
        "--probe-after",
        "4",
        "--val-n",
        "16",
        "--probe-size",
        "4",
        "--out",
        str(out / "gradients"),
    )
    cli("analyze", "crops", *ckpt, "--n", "4", "--out", str(out / "crops"))
    cli("analyze", "latents", *ckpt, "--n", "32", "--out", str(out / "latents"))
    cli("analyze", "latents", *ckpt, "--n", "32", "--normalize", "unit", "--out", str(out / "latents_unit"))
    cli(
        "analyze",
        "latent-use",
        *ckpt,
        "--n",
        str(args.test),
        "--batch-size",
        "16",
        "--out",
        str(out / "latent_use"),
    )

    images = Path(args.images)
    images.mkdir(parents=True, exist_ok=True)
    for src, name in FIGURES.items():
        n = shrink_png(out / src, images / name)
        print(f"{images / name}: {n / 1000:.0f} KB")

    use = json.loads((out / "latent_use/latent_use.json").read_text())
    lat = json.loads((out / "latents/latents.json").read_text())
    unit = json.loads((out / "latents_unit/latents.json").read_text())
    crops = json.loads((out / "crops/crops.json").read_text())
    grads = json.loads((out / "gradients/gradients.json").read_text())
    summary = {
        "latent_use": {
            k: (v["accuracy"], v["same_prediction_as_trained"]) for k, v in use["conditions"].items()
        },
        "sweep": [(p["latents"], p["accuracy"], p["same_prediction_as_trained"]) for p in use["sweep"]],
        "latents": {k: lat["distances"][k] for k in ("centroid", "within", "mean_norm")},
        "latent_steps": lat["latent_steps"],
        "explained_variance": lat["explained_variance"],
        "unit": {k: unit["distances"][k] for k in ("centroid", "within")},
        "unit_latent_steps": unit["latent_steps"],
        "unit_explained_variance": unit["explained_variance"],
        "crops_inside_share": crops["mean_inside_share"],
        "easy_hard": {k: grads["easy_hard"][k] for k in ("rule", "accuracy", "easy_ids", "hard_ids")},
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
