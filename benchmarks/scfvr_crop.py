"""Accuracy effect of the SCF-VR crop resolution (``scfvr.zoom``) on the demo benchmark.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/scfvr_crop.py --out runs/scfvr_crop [--zooms 0 1 2]

Trains the demo's ``cot`` once (``vedas demo``'s full size, seed 0), then the demo's ``vedas`` stage
from that same checkpoint once per zoom (same seed, data and recipe; only ``scfvr.zoom`` differs),
evaluates each on the demo's test split and prints accuracy, the mean recon loss of the last
epoch and the training time side by side. ``0`` is the old default (every crop resized to the
sample's own input size). The demo's images are 112 px (a 4 × 4 merged grid), so with W = 3 the
old default and zoom 1.25 both re-encode 4 × 4-cell crops: their runs are the same computation.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    import vedas
    from vedas.data import load, synth
    from vedas.evaluation.evaluate import evaluate
    from vedas.experiments import demo
    from vedas.train.recipe import main as train_main

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/scfvr_crop")
    ap.add_argument("--zooms", type=float, nargs="+", default=[0.0, 1.0])
    ap.add_argument("--quick", action="store_true", help="the demo's --quick size (a smoke run)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    size = demo.QUICK if args.quick else demo.FULL
    out = Path(args.out)
    data = out / "data"
    if not (data / "test.jsonl").is_file():
        synth.write(
            data, train=size.train, test=size.test, seed=args.seed, cfg=synth.SynthConfig(**size.synth)
        )
    test = list(load("synthetic", path=str(data), split="test"))
    cot_dir = out / "cot"
    cot = cot_dir / "final"
    if not (cot / "config.yaml").is_file():
        cot = train_main(demo.train_config("cot", size, data, out, args.seed))
    rows = {}
    for zoom in args.zooms:
        cfg = demo.train_config("vedas", size, data, out / f"zoom{zoom:g}", args.seed, base=cot)
        cfg.scfvr = dataclasses.replace(cfg.scfvr, zoom=zoom)
        cfg.run.output_dir = str(out / f"zoom{zoom:g}")
        t0 = time.perf_counter()
        final = train_main(cfg)
        seconds = time.perf_counter() - t0
        metrics = [json.loads(line) for line in (Path(cfg.run.output_dir) / "metrics.jsonl").open()]
        recon = [
            m for m in metrics if "recon" in m and m.get("epoch") == max(x.get("epoch", 0) for x in metrics)
        ]
        report = evaluate(vedas.load(final), test, "vedas", batch_size=16, scoring="vedas")
        rows[zoom] = {
            "accuracy": report["accuracy"],
            "n": report["n"],
            "recon_last_epoch": statistics.mean(m["recon"] for m in recon) if recon else None,
            "train_seconds": seconds,
        }
        print(f"zoom {zoom:g}: {rows[zoom]}", flush=True)
    print(f"\n{'zoom':>6s}{'accuracy':>10s}{'recon (last epoch)':>20s}{'train s':>9s}")
    for zoom, r in rows.items():
        rec = f"{r['recon_last_epoch']:.4f}" if r["recon_last_epoch"] is not None else "-"
        print(f"{zoom:6g}{100 * r['accuracy']:9.1f}%{rec:>20s}{r['train_seconds']:9.0f}")
    (out / "scfvr_crop.json").write_text(json.dumps({str(z): r for z, r in rows.items()}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
