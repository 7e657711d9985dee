"""What the ``fine`` preset costs against ``easy``: CPU seconds per training step, side by side.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/preset_cost.py            # ~2-4 CPU minutes
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/preset_cost.py --steps 4  # shorter

For each preset: the demo's full-size tiny Qwen2-VL and recipe (:mod:`vedas.experiments.demo`), method
``cot`` (the demo's longest training), trained twice from scratch on the same data, for ``a`` and
for ``a + steps`` optimizer steps; the difference of the two runs' process CPU time over ``steps``
is the CPU cost of one step (setup cancels). Process CPU time, not wall time, so other load on the
machine barely moves it; one thread. Prints each preset's s/step and the ratio fine/easy.
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path


def cpu_seconds(preset: str, steps: int, root: Path) -> float:
    from vedas.data import synth
    from vedas.experiments.demo import FULL, train_config
    from vedas.train.recipe import main as train_main

    size = dataclasses.replace(FULL.with_preset(preset), train=16 * steps, test=0)
    data = root / preset / f"data{steps}"
    synth.write(data, train=size.train, test=0, seed=0, cfg=size.synth_config())
    cfg = train_config("cot", size, data, root / preset / f"run{steps}", seed=0)
    cfg = dataclasses.replace(
        cfg,
        optim=dataclasses.replace(cfg.optim, epochs=1),
        run=dataclasses.replace(cfg.run, progress=False),
    )
    t0 = time.process_time()
    train_main(cfg)
    return time.process_time() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=8, help="extra optimizer steps measured (default 8)")
    parser.add_argument("--base", type=int, default=2, help="steps of the shorter run (default 2)")
    args = parser.parse_args()
    per_step = {}
    with tempfile.TemporaryDirectory() as tmp:
        for preset in ("easy", "fine"):
            short = cpu_seconds(preset, args.base, Path(tmp))
            long = cpu_seconds(preset, args.base + args.steps, Path(tmp))
            per_step[preset] = (long - short) / args.steps
            print(f"{preset}: {per_step[preset]:.3f} CPU s per cot training step (batch 16)")
    print(f"fine / easy: {per_step['fine'] / per_step['easy']:.2f}x")


if __name__ == "__main__":
    main()
