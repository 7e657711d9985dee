"""How often two engines make the same discrete choices, and how far apart their latents are, per dtype.

    .venv/bin/python tests/agreement.py [--archs qwen2_vl,chameleon] [--samples 8] [--json out.json]
    ATEN_CPU_CAPABILITY=avx2 .venv/bin/python tests/agreement.py     # as an AVX2 machine computes it

For each architecture (a tiny random model, 4 layers) and dtype (float32, bfloat16) it runs
``generate`` (mode ``vedas``: 3 latent steps, K = 6, 6 answer tokens) on random images and
questions with the cached engine, the recompute oracle and the static cache, and compares each
pair margin-aware (:func:`numerics.compare_runs`). It prints, per pair:

- ``decisive``: the replay and token choices whose reference margin exceeded the numeric bound
  (all of them equal, or the comparison raises);
- ``near ties``: choices at which comparing stopped (an equally valid branch);
- ``agree``: the share of all choices, compared to the end, that are identical — the measured
  agreement rate the docs quote (near ties included, whichever way they went);
- ``latent/bound``: the largest latent difference along agreeing steps as a share of the bound.

The numbers depend on the CPU's kernels (that is the point): docs/testing.md lists the ones measured.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numerics
import vedas
from vedas.config import LatentConfig
from vedas.engine.static import compile_settings
from vedas.model import VedasModel

ARCHS = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl", "chameleon")
QUESTIONS = (
    "What is in the picture?",
    "How many red squares are there, and how many blue circles are left after removing two?",
    "Count.",
    "Which colour is most common?",
)


def inputs(n: int) -> tuple[list[Image.Image], list[str], list[list[str] | None]]:
    """``n`` random non-square images with questions of different lengths."""
    rng = np.random.default_rng(7)
    sizes = [(112, 168), (84, 140), (140, 84), (112, 112)]
    images = [Image.fromarray((rng.random((*sizes[i % 4], 3)) * 255).astype("uint8")) for i in range(n)]
    choices = [["one", "two"], ["1", "2", "3", "4"], None, ["red", "blue", "green"]]
    return images, [QUESTIONS[i % 4] for i in range(n)], [choices[i % 4] for i in range(n)]


def exact_agreement(ref, ours) -> tuple[int, int]:
    """(identical choices, all choices), comparing each sample to its end or its first difference."""
    same = total = 0
    for b in range(len(ref.token_ids)):
        choices = list(zip(ref.replay_indices[b], ours.replay_indices[b]))
        choices += list(zip(ref.token_ids[b], ours.token_ids[b] + [None] * len(ref.token_ids[b])))
        for x, y in choices:
            total += 1
            if x != y:
                break
            same += 1
    return same, total


def measure(arch: str, dtype: torch.dtype, batch) -> dict[str, dict[str, float]]:
    model, processor = vedas.tiny_model(arch, hidden=64, layers=4, heads=4, kv_heads=2, seed=0)
    vm = VedasModel(model.to(dtype), processor, LatentConfig(latents=3, replay_k=6, max_new_tokens=6))
    depth, width = numerics.model_depth(vm.model), numerics.model_width(vm.model)
    with compile_settings(None):  # the static cache uncompiled: the same cache and mask, no inductor build
        runs = {
            e: numerics.traced(vm, batch, engine=e, mode="vedas") for e in ("cached", "recompute", "static")
        }
    out = {}
    for ref_name, ours_name in (("recompute", "cached"), ("cached", "static")):
        (ref, ref_trace), (ours, ours_trace) = runs[ref_name], runs[ours_name]
        agreement = numerics.compare_runs(
            ref, ours, ref_trace, ours_trace, dtype=dtype, depth=depth, width=width
        )
        same, total = exact_agreement(ref, ours)
        limit = numerics.bound(dtype, depth * ref.latents.shape[1], width) * numerics.scale(ref.latents)
        diff = float((ours.latents.float() - ref.latents.float()).abs().max())
        out[f"{ours_name} vs {ref_name}"] = {
            "decisive": agreement.decisive,
            "near_ties": agreement.near_ties,
            "latent_phase_compared": agreement.latent_phases_compared(len(ref.token_ids)),
            "agree": same / total,
            "latent_over_bound": diff / limit,
        }
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--archs", default=",".join(ARCHS), help="comma-separated architectures")
    ap.add_argument("--samples", type=int, default=8, help="random samples in the batch")
    ap.add_argument("--json", default=None, help="also write the numbers to this JSON file")
    args = ap.parse_args(argv)
    batch = inputs(args.samples)
    results = {}
    for arch in args.archs.split(","):
        for dtype in (torch.float32, torch.bfloat16):
            for pair, r in measure(arch, dtype, batch).items():
                key = f"{arch}/{str(dtype).removeprefix('torch.')}/{pair}"
                results[key] = r
                print(
                    f"{key:42s} decisive {r['decisive']:3d}  near ties {r['near_ties']:2d}  "
                    f"latent phase compared {r['latent_phase_compared']:4.0%}  agree {r['agree']:6.1%}  latent/bound {r['latent_over_bound']:.3f}",
                    flush=True,
                )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
