"""Latent-engine benchmark: cached vs recompute, recording overhead, attention memory.

    .venv/bin/python benchmarks/latent_engine.py [--quick] [--json out.json]

One run on one tiny random Qwen2-VL (real architecture; sizes in ``vedas.experiments.bench.SIZES``) with a
prompt of ≥ 300 tokens of which ≥ 128 are visual tokens, T_r = 4, K = 32, at batch 1 and 8,
printing side by side:

- the latent phase (the T_r chunk passes), cached engine vs recompute engine (the reference
  code's way: every step re-runs the prefix with full attention maps) — target ≥ 3× faster;
- the recording overhead: a prefill forward with the last-query recorder on vs off — target ≤ 10 %;
- the peak memory of one prefill that yields the attention row: recorder vs eager maps.

The measuring code is shared with ``vedas bench`` (:mod:`vedas.experiments.bench`).
"""

from __future__ import annotations

import argparse
import sys

import torch

from vedas.experiments import bench


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer repeats (a smoke run)")
    ap.add_argument("--json", default=None, help="also write the numbers to this JSON file")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="torch device")
    args = ap.parse_args(argv)
    repeats = 2 if args.quick else 5
    vm, images, questions, choices = bench.build(args.device, n=8)
    first = vm.prepare(images[:1], questions[:1], choices[:1])
    n_tok, n_vis = int(first.attention_mask.sum()), int(first.input_ids.eq(vm.backbone.image_token_id).sum())
    assert n_tok >= 300 and n_vis >= 128, (n_tok, n_vis)
    print(
        f"tiny Qwen2-VL {bench.SIZES}, prompt {n_tok} tokens ({n_vis} visual), T_r=4, K=32, device={args.device}, "
        f"{torch.get_num_threads()} threads"
    )
    result = {
        "device": args.device,
        "threads": torch.get_num_threads(),
        "sizes": {**bench.SIZES, "prompt_tokens": n_tok, "visual_tokens": n_vis},
        "batches": {},
    }
    rows: dict[str, list[str]] = {}
    for bs in (1, 8):
        part = (images[:bs], questions[:bs], choices[:bs])
        cached = bench.generate_times(vm, *part, repeats, engine="cached")
        recompute = bench.generate_times(vm, *part, repeats, engine="recompute")
        rec = bench.recording_overhead(vm, *part, repeats)
        mem = bench.peak_memory(bs, args.device)
        entry = {
            "cached_ms": cached,
            "recompute_ms": recompute,
            "recording": rec,
            "peak_memory_bytes": mem,
            "latent_speedup_cached_vs_recompute": recompute["latent"] / cached["latent"],
            "e2e_speedup_cached_vs_recompute": recompute["total"] / cached["total"],
            "peak_memory_ratio_eager_over_recording": mem["eager"] / max(mem["recording"], 1),
        }
        result["batches"][str(bs)] = entry
        for name, val in [
            ("latent phase cached (ms)", f"{cached['latent']:.1f}"),
            ("latent phase recompute (ms)", f"{recompute['latent']:.1f}"),
            ("  speed-up (target ≥ 3×)", f"{entry['latent_speedup_cached_vs_recompute']:.1f}×"),
            ("end-to-end cached (ms)", f"{cached['total']:.1f}"),
            ("end-to-end recompute (ms)", f"{recompute['total']:.1f}"),
            ("  speed-up", f"{entry['e2e_speedup_cached_vs_recompute']:.1f}×"),
            ("prefill plain SDPA (ms)", f"{rec['plain_ms']:.1f}"),
            ("prefill + recorder (ms)", f"{rec['recording_ms']:.1f}"),
            ("  overhead (target ≤ 10%)", f"{100 * rec['overhead']:+.1f}%"),
            ("peak mem recorder (MiB)", f"{mem['recording'] / 2**20:.1f}"),
            ("peak mem eager maps (MiB)", f"{mem['eager'] / 2**20:.1f}"),
            ("  eager / recorder", f"{entry['peak_memory_ratio_eager_over_recording']:.1f}×"),
        ]:
            rows.setdefault(name, []).append(val)
    print(f"{'':28s}{'batch 1':>14s}{'batch 8':>14s}")
    for name, vals in rows.items():
        print(f"{name:28s}" + "".join(f"{v:>14s}" for v in vals))
    bench.write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
