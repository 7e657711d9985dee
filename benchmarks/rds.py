"""Routing Depth Scaling benchmark: prefill and latent-phase time with RDS vs without, side by side.

    .venv/bin/python benchmarks/rds.py [--quick] [--json out.json] [--device cpu|cuda]

The same tiny random Qwen2-VL (hidden 256, 4 layers) and prompt as
``benchmarks/latent_engine.py`` (≈450 tokens of which 128 are visual), T_r = 4 latent steps,
K = 32 replayed tokens, batch 1 and 8. RDS runs with α = 32, D = 1 in every layer. One
model carries the routers; the two variants are the same ``vm.generate`` call with
``rds.enabled`` on or off, interleaved call by call (alternating which goes first) so drift
on a busy machine hits both alike. Times are ``Details.timings_ms`` medians after a warm-up;
the overhead is the median of the paired with/without ratios, minus one.

Next to the measured overhead the table prints the extra compute the routed tokens imply:
each routed layer runs once more over min(α, n) of a pass's n tokens, so the share is
min(α, n) / n per layer — small for the prefill (32 of ~450), and almost one for a latent
chunk of K + 1 = 33 tokens (32 of 33). That share counts token-wise work (projections, MLP);
the subset's attention is over α keys instead of the whole history, so it is an upper bound
on the flops, while the measured time also pays the per-layer fixed costs (router, top-α
sort, gather/scatter, the extra kernel launches), which dominate on a model this small.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from vedas.dev import bench

ALPHA, DEPTH = 32, 1
PHASES = ("prefill", "latent", "decode")


def timed_generate(vm, images, questions, choices, bs: int) -> dict[str, float]:
    t0 = time.perf_counter()
    d = vm.generate(images[:bs], questions[:bs], choices[:bs], return_details=True)
    return {**d.timings_ms, "total": (time.perf_counter() - t0) * 1e3}


def compare(vm, rds, images, questions, choices, bs: int, repeats: int) -> dict[str, Any]:
    """Interleaved runs with RDS off and on; medians per phase and the median paired ratio."""
    runs: dict[bool, list[dict[str, float]]] = {False: [], True: []}
    for on in (False, True):  # warm-up
        rds.enabled = on
        timed_generate(vm, images, questions, choices, bs)
    for i in range(repeats):
        for on in (False, True) if i % 2 == 0 else (True, False):
            rds.enabled = on
            runs[on].append(timed_generate(vm, images, questions, choices, bs))
    rds.enabled = True
    keys = [*PHASES, "total"]
    out: dict[str, Any] = {
        "without_ms": {k: statistics.median(r[k] for r in runs[False]) for k in keys},
        "with_ms": {k: statistics.median(r[k] for r in runs[True]) for k in keys},
    }
    out["overhead"] = {
        k: statistics.median(a[k] / b[k] for a, b in zip(runs[True], runs[False])) - 1 for k in keys
    }
    return out


def implied_share(token_counts: list[int], alpha: int) -> float:
    """Mean over samples of min(α, n)/n: the extra token-wise work of one routed layer."""
    return statistics.mean(min(alpha, n) / n for n in token_counts)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer repeats (a smoke run)")
    ap.add_argument("--json", default=None, help="also write the numbers to this JSON file")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="torch device")
    ap.add_argument(
        "--repeats", type=int, default=None, help="timed runs per variant (default 10, 3 with --quick)"
    )
    args = ap.parse_args(argv)

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from latent_engine import SIZES, build
    from vedas.method.routing import RoutingConfig, enable_routing

    repeats = args.repeats or (3 if args.quick else 10)
    vm, images, questions, choices = build(args.device)
    rds = enable_routing(vm, RoutingConfig(alpha=ALPHA, depth=DEPTH, layers="all"))
    with torch.no_grad():  # trained-looking step encodings; the cost does not depend on their values
        for e in rds.step_encodings.values():
            e.normal_(0.0, 0.1)
    k = vm.config.replay_k
    result: dict[str, Any] = {
        "device": str(args.device),
        "threads": torch.get_num_threads(),
        "sizes": {**SIZES, "latents": vm.config.latents, "replay_k": k},
        "rds": {"alpha": ALPHA, "depth": DEPTH, "layers": "all"},
        "batches": {},
    }
    rows: dict[str, list[str]] = {}
    for bs in (1, 8):
        batch = vm.prepare(images[:bs], questions[:bs], choices[:bs])
        prompt_tokens = batch.attention_mask.sum(1).tolist()
        n_vis = int(batch.input_ids[0].eq(vm.backbone.image_token_id).sum())
        chunk = min(k, n_vis) + 1  # K replayed tokens + the latent; the 128 visual tokens last all 4 steps
        share = {"prefill": implied_share(prompt_tokens, ALPHA), "latent": implied_share([chunk], ALPHA)}
        entry = compare(vm, rds, images, questions, choices, bs, repeats)
        entry["implied_extra_share"] = share
        entry["prompt_tokens"] = prompt_tokens
        entry["chunk_tokens"] = chunk
        result["batches"][str(bs)] = entry
        w, wo, ov = entry["with_ms"], entry["without_ms"], entry["overhead"]
        for name, val in [
            ("prefill without RDS (ms)", f"{wo['prefill']:.1f}"),
            ("prefill with RDS (ms)", f"{w['prefill']:.1f}"),
            ("  prefill measured overhead", f"{100 * ov['prefill']:+.0f}%"),
            ("  prefill implied extra", f"+{100 * share['prefill']:.0f}%"),
            ("latent without RDS (ms)", f"{wo['latent']:.1f}"),
            ("latent with RDS (ms)", f"{w['latent']:.1f}"),
            ("  latent measured overhead", f"{100 * ov['latent']:+.0f}%"),
            ("  latent implied extra", f"+{100 * share['latent']:.0f}%"),
            ("decode without / with (ms)", f"{wo['decode']:.1f} / {w['decode']:.1f}"),
            ("end-to-end overhead", f"{100 * ov['total']:+.0f}%"),
        ]:
            rows.setdefault(name, []).append(val)
    print(
        f"tiny Qwen2-VL {SIZES}, prompt {result['batches']['1']['prompt_tokens'][0]} tokens, "
        f"T_r={vm.config.latents}, K={k}; RDS α={ALPHA}, D={DEPTH}, all layers; device={args.device}, "
        f"{repeats} interleaved repeats"
    )
    print(f"implied extra = min(α, n)/n per routed layer: n = prompt tokens (prefill), {k}+1 (latent chunk)")
    print(f"{'':30s}" + "".join(f"{'batch ' + str(b):>18s}" for b in (1, 8)))
    for name, vals in rows.items():
        print(f"{name:30s}" + "".join(f"{v:>18s}" for v in vals))
    bench.write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
