"""``vedas demo``: the main job on the embedded default, with no download.

Until the training and evaluation issues land, the demo is a *smoke generation*: it builds
a tiny random model of the real Qwen2-VL architecture, draws one image, runs every mode
through both engines, checks that the cached engine agrees with the recompute oracle, and
saves and reloads the checkpoint. It says so when it runs. The full demo (synthetic
benchmark, four trained methods, report and plots) comes with issue 6.
"""

from __future__ import annotations

import argparse
import tempfile
import time

HELP = "run the main job on the embedded default (tiny Qwen2-VL, no download)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--arch", default="qwen2_vl", choices=["qwen2_vl", "qwen2_5_vl"], help="tiny model architecture"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed for the random weights and image")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import numpy as np
    from PIL import Image

    import vedas
    from vedas.config import LatentConfig

    print("vedas demo: smoke generation only — training and evaluation arrive with issues 4 and 6.")
    model, processor = vedas.tiny_model(args.arch, seed=args.seed)
    vm = vedas.VedasModel(model, processor, LatentConfig(latents=4, replay_k=8, max_new_tokens=12))
    rng = np.random.default_rng(args.seed)
    image = Image.fromarray((rng.random((112, 168, 3)) * 255).astype("uint8"))
    q, ch = "How many red squares are there?", ["1", "2", "3", "4"]
    for mode in ("no_cot", "cot", "latent", "vedas"):
        t0 = time.perf_counter()
        d = vm.generate([image], [q], [ch], mode=mode, return_details=True)
        ms = (time.perf_counter() - t0) * 1e3
        print(
            f"  {mode:7s} ar_steps={d.ar_steps[0]:3d}  {ms:7.1f} ms  replayed per step: "
            f"{[len(s) for s in d.replay_indices[0]]}  text={d.texts[0]!r}"
        )
    fast = vm.generate([image], [q], [ch], return_details=True)
    slow = vm.generate([image], [q], [ch], engine="recompute", return_details=True)
    diff = float((fast.latents - slow.latents).abs().max())
    same = fast.token_ids == slow.token_ids and fast.replay_indices == slow.replay_indices
    print(f"  cached vs recompute: max |Δ latent| = {diff:.2e}, same tokens and replay: {same}")
    with tempfile.TemporaryDirectory() as tmp:
        vm.save(f"{tmp}/ckpt")
        again = vedas.load(f"{tmp}/ckpt").generate([image], [q], [ch], return_details=True)
        print(f"  checkpoint round trip gives the same answer: {again.token_ids == fast.token_ids}")
    return 0 if same and diff <= 1e-4 else 1
