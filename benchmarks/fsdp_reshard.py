"""FSDP2 ``reshard_after_forward`` false vs true: time per training step, side by side in one run.

    .venv/bin/python benchmarks/fsdp_reshard.py [--nproc 2] [--rounds 1] [--json OUT]

Each round trains the same short ``vedas`` run (synthetic_tiny.yaml's tiny Qwen2-VL, SCF-VR and
routing on, T_r = 2 so the last epoch runs the full latent loop) under ``torchrun --nproc_per_node
N`` with ``configs/fsdp/decoder_layers.yaml`` and with the same file but ``reshard_after_forward:
true``, one after the other. On CPU the ranks talk over gloo; with CUDA visible, over NCCL on N GPUs.
The time of a step is read from the run's own metrics (``samples_per_s`` at the final stage,
the first step of the epoch left out); the table shows each setting's median and the ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TINY = (
    "{hidden: 128, layers: 4, heads: 4, kv_heads: 2, vision_depth: 2, vision_hidden: 64, max_pixels: 12544}"
)


def step_times(out: Path, per_step: int) -> list[float]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "samples_per_s" in r]
    last = max(r["stage"] for r in steps)
    return [per_step / r["samples_per_s"] for r in steps if r["stage"] == last][1:]


def train(settings: Path, out: Path, data: Path, nproc: int, batch: int) -> list[float]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    launch = ["--nproc_per_node", str(nproc), "--master_addr", "127.0.0.1", "--master_port", str(port)]
    fields = {
        "data.path": data,
        "data.limit": 8 * batch * nproc,
        "model.tiny": TINY,
        "optim.batch_size": batch,
        "optim.epochs": 3,
        "optim.warmup_ratio": 0.0,
        "latent.latents": 2,
        "routing": "{layers: all, alpha: 4}",
        "run.output_dir": out,
        "run.progress": "false",
        "run.log_every": 1,
        "run.fsdp": settings,
    }
    cfg = [a for k, v in fields.items() for a in (f"--{k}", str(v))]
    cmd = [sys.executable, "-m", "torch.distributed.run", *launch, "-m", "vedas.cli", "train"]
    cmd += ["--config", str(ROOT / "configs/synthetic_tiny.yaml"), *cfg]
    res = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if res.returncode != 0:
        sys.exit(f"training with {settings} failed:\n{res.stderr[-3000:]}")
    return step_times(out, batch * nproc)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nproc", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--batch", type=int, default=2, help="records per rank per step")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    from vedas.data import synth

    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        data = tmp_path / "synth"
        synth.write(data, train=8 * args.batch * args.nproc, test=4, seed=0, progress=False)
        keep = ROOT / "configs/fsdp/decoder_layers.yaml"
        free = tmp_path / "reshard.yaml"
        free.write_text("reshard_after_forward: true\n")
        times: dict[str, list[float]] = {"false": [], "true": []}
        for r in range(args.rounds):
            for name, settings in (("false", keep), ("true", free)):
                times[name] += train(settings, tmp_path / f"{name}{r}", data, args.nproc, args.batch)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"{'reshard_after_forward':<24}{'s/step (median)':>16}{'steps':>7}")
    for k, v in times.items():
        print(f"{k:<24}{med[k]:>16.3f}{len(v):>7}")
    print(f"true / false: {med['true'] / med['false']:.2f}x")
    if args.json:
        Path(args.json).write_text(
            json.dumps({"nproc": args.nproc, "median_s": med, "times": times}, indent=1)
        )


if __name__ == "__main__":
    main()
