"""Time writing the synthetic benchmark: 10,000 samples (PNG + JSONL) on one core.

    .venv/bin/python benchmarks/synth_speed.py                 # 8,000 train + 2,000 test
    .venv/bin/python benchmarks/synth_speed.py --samples 2000 --out /tmp/synth

The target is under a minute for 10k samples with the default knobs (112 px images). The
output folder is a temporary one, removed afterwards, unless ``--out`` is given.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from vedas.data.synth import SynthConfig, write


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--samples", type=int, default=10_000, help="samples in all, 80%% train (default: 10000)"
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    parser.add_argument("--out", default=None, help="output folder to keep (default: a temporary folder)")
    args = parser.parse_args()

    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="vedas_synth_"))
    train = args.samples * 4 // 5
    try:
        start, cpu_start = time.perf_counter(), time.process_time()
        write(out, train=train, test=args.samples - train, seed=args.seed, cfg=SynthConfig())
        seconds = time.perf_counter() - start
        # CPU time too: on a shared machine the wall clock also counts other processes.
        cpu = time.process_time() - cpu_start
        size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    finally:
        if not args.out:
            shutil.rmtree(out, ignore_errors=True)
    print(
        f"wrote {args.samples} samples ({train} train + {args.samples - train} test) in {seconds:.1f} s wall, "
        f"{cpu:.1f} s CPU = {args.samples / seconds:.0f} samples/s, {size / 2**20:.0f} MiB on disk"
    )


if __name__ == "__main__":
    main()
