"""A fingerprint of four demo-sized training steps, to prove a refactor changed no behaviour.

    PYTHONPATH=src OMP_NUM_THREADS=1 python scripts/step_hash.py [--method vedas] [--out /tmp/step-hash]

Writes a small synthetic dataset, trains ``--method`` for four optimizer steps (curriculum
stages 0 and 1: CoT, then latent steps) (tiny random Qwen2-VL, seed
0, SCF-VR and routing on for ``vedas``) through :func:`vedas.train.recipe.main`, and prints the logged
losses and a SHA-256 of every saved tensor. The configuration is a plain dict of the documented YAML
fields, so the same script runs on the code before and after a restructuring: equal digests mean
bit-identical training.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file


def config(method: str, data: Path, out: Path) -> dict:
    cfg = {
        "method": method,
        "model": {
            "base": "tiny",
            "tiny": {
                "hidden": 64,
                "layers": 2,
                "heads": 2,
                "kv_heads": 1,
                "vision_depth": 1,
                "max_pixels": 112 * 112,
            },
            "bpe_vocab": 320,
            "vision": "merger",
        },
        "data": {"name": "synthetic", "path": str(data), "split": "train"},
        "latent": {"latents": 2, "replay_k": 2, "max_new_tokens": 16},
        "curriculum": {"epochs_per_stage": 1},
        "scfvr": {"window": 3, "weight": 1.0},
        "optim": {"lr": 2e-3, "epochs": 3, "batch_size": 4, "seed": 0},
        "run": {
            "output_dir": str(out / method),
            "log_every": 1,
            "overwrite": True,
            "max_steps": 4,
            "progress": False,
        },
    }
    if method == "vedas":
        cfg["routing"] = {"layers": "all", "alpha": 8, "depth": 1}
        cfg["latent"].update(latent_norm="ema", latent_head="pca")  # GAP's hooks too
    return cfg


def digest(final: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(final.rglob("*.safetensors")):
        tensors = load_file(str(f))
        for name in sorted(tensors):
            h.update(name.encode())
            h.update(tensors[name].contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def main() -> int:
    from vedas.config import from_dict
    from vedas.data import synth
    from vedas.train.config import TrainConfig
    from vedas.train.recipe import main as train_main

    p = argparse.ArgumentParser()
    p.add_argument("--method", default="vedas")
    p.add_argument("--out", default="/tmp/vedas-step-hash")
    a = p.parse_args()
    out = Path(a.out)
    shutil.rmtree(out, ignore_errors=True)
    data = out / "data"
    synth.write(str(data), train=8, test=2, seed=0, cfg=synth.preset("easy"), progress=False)
    final = train_main(from_dict(TrainConfig, config(a.method, data, out)))
    lines = (out / a.method / "metrics.jsonl").read_text().splitlines()
    losses = [json.loads(x)["loss"] for x in lines if '"loss"' in x]
    print(
        json.dumps(
            {"method": a.method, "losses": [float(x).hex() for x in losses], "weights": digest(Path(final))}
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
