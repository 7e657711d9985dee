"""Routing Depth Scaling benchmark: prefill and latent-phase time without RDS, with it, and with the
last decoder layer refining every selected row instead of only what is read, side by side.

    .venv/bin/python benchmarks/rds.py [--quick] [--json out.json] [--device cpu|cuda]

The benchmark model of ``vedas.experiments.bench`` (tiny random Qwen2-VL, hidden 256, 4 layers; the
prompt of ``benchmarks/latent_engine.py``, ≈450 tokens of which 128 are visual), T_r = 4
latent steps, K = 32 replayed tokens, batch 1 and 8. RDS runs with α = 32, D = 1 in every
layer. One model carries the routers; the three variants are the same ``vm.generate`` call
with ``rds.enabled`` / ``rds.trim_last_layer`` set, interleaved call by call with the order
rotating each round, so drift on a busy machine hits all alike. Times are ``Details.timings_ms``
medians after a warm-up; overheads and the trimmed/untrimmed ratio are medians of ratios taken
within a round.

- *without*: ``rds.enabled = False``, the plain model.
- *with*: RDS as it runs by default: the last decoder layer refines only the segment of the
  pass's last position, and only when its router selects that position
  (``vedas.method.routing.read_rows``); nothing else of that layer's output is read.
- *untrimmed*: ``rds.trim_last_layer = False``: the last layer refines every selected row, like
  the others. Same latents and tokens (the tests check it), more work.

Next to the times the table prints the extra compute the routed tokens imply: each routed
layer runs once more over min(α, n) of a pass's n tokens, so the share is min(α, n)/n per
layer — small for the prefill (32 of ~450), almost one for a latent chunk of K + 1 = 33 tokens.
It also counts, in one generate call of each variant, the refinement passes of the last layer
and the rows all refinement passes compute (batch × subset width): what trimming removes,
free of timing noise. The share counts token-wise work (projections, MLP); the subset's
attention is over α keys instead of the whole history, so it is an upper bound on the flops,
while the measured time also pays fixed per-layer costs (router, top-α sort, gather/scatter,
kernel launches), which dominate on a model this small.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from typing import Any

import torch

from vedas.experiments import bench
from vedas.method.routing import RoutingConfig, RoutingDepthScaling, enable_routing

ALPHA, DEPTH = 32, 1
KEYS = ("prefill", "latent", "decode", "total")
VARIANTS = {"without": (False, True), "with": (True, True), "untrimmed": (True, False)}
"""name -> (rds.enabled, rds.trim_last_layer)"""


def set_variant(rds: RoutingDepthScaling, name: str) -> None:
    rds.enabled, rds.trim_last_layer = VARIANTS[name]


def refinement_work(vm, rds: RoutingDepthScaling, part: tuple) -> dict[str, dict[str, int]]:
    """Refinement passes and refined rows (B × subset width, padding included: it is computed) of
    one generate call, per routed variant: in the last decoder layer and in all layers.

    The passes call a layer's forward directly, so only its attention module's hook sees them;
    the plain passes (the *without* run) are subtracted.
    """
    layers = vm.backbone.decoder_layers()
    seen = [[0, 0] for _ in layers]  # per layer: attention calls, rows

    def hook(i: int):
        def count(_module, _args, output) -> None:
            out = output[0] if isinstance(output, tuple) else output
            seen[i][0] += 1
            seen[i][1] += out.shape[0] * out.shape[1]

        return count

    handles = [layer.self_attn.register_forward_hook(hook(i)) for i, layer in enumerate(layers)]
    totals = {}
    try:
        for name in VARIANTS:
            set_variant(rds, name)
            seen[:] = [[0, 0] for _ in layers]
            vm.generate(*part)
            totals[name] = [tuple(c) for c in seen]
    finally:
        for h in handles:
            h.remove()
        set_variant(rds, "with")
    plain = totals["without"]
    out = {}
    for name in ("with", "untrimmed"):
        extra = [(c - p[0], r - p[1]) for (c, r), p in zip(totals[name], plain)]
        out[name] = {
            "last_layer_passes": extra[rds.last_layer][0],
            "last_layer_rows": extra[rds.last_layer][1],
            "rows": sum(r for _, r in extra),
        }
    return out


def compare(vm, rds: RoutingDepthScaling, part: tuple, repeats: int) -> dict[str, Any]:
    """Interleaved runs of every variant; medians per phase and the within-round ratios."""

    def call(name: str):
        def run():
            set_variant(rds, name)
            return vm.generate(*part, return_details=True)

        return run

    runs = bench.interleaved({name: call(name) for name in VARIANTS}, vm.device, repeats)
    set_variant(rds, "with")
    out: dict[str, Any] = {f"{name}_ms": bench.medians(runs[name]) for name in VARIANTS}
    out["overhead"] = {k: bench.ratio(runs, "with", "without", k) - 1 for k in KEYS}
    out["untrimmed_overhead"] = {k: bench.ratio(runs, "untrimmed", "without", k) - 1 for k in KEYS}
    out["trimmed_over_untrimmed"] = {k: bench.ratio(runs, "with", "untrimmed", k) for k in KEYS}
    out["refinement_work"] = refinement_work(vm, rds, part)
    return out


def implied_share(token_counts: list[int], alpha: int) -> float:
    """Mean over samples of min(α, n)/n: the extra token-wise work of one routed layer."""
    return statistics.mean(min(alpha, n) / n for n in token_counts)


def table_rows(entry: dict[str, Any]) -> list[tuple[str, str]]:
    wo, w, un = entry["without_ms"], entry["with_ms"], entry["untrimmed_ms"]
    ov, uov, tr = entry["overhead"], entry["untrimmed_overhead"], entry["trimmed_over_untrimmed"]
    share, work = entry["implied_extra_share"], entry["refinement_work"]
    w_work, u_work = work["with"], work["untrimmed"]
    rows = []
    for phase in ("prefill", "latent"):
        rows += [
            (
                f"{phase} without / with / untrimmed (ms)",
                f"{wo[phase]:.1f} / {w[phase]:.1f} / {un[phase]:.1f}",
            ),
            (f"  {phase} overhead with / untrimmed", f"{100 * ov[phase]:+.0f}% / {100 * uov[phase]:+.0f}%"),
            (f"  {phase} with / untrimmed (ratio)", f"{tr[phase]:.3f}"),
            (f"  {phase} implied extra", f"+{100 * share[phase]:.0f}%"),
        ]
    return [
        *rows,
        ("decode without / with (ms)", f"{wo['decode']:.1f} / {w['decode']:.1f}"),
        ("end to end with / untrimmed (ratio)", f"{tr['total']:.3f}"),
        ("end-to-end overhead with", f"{100 * ov['total']:+.0f}%"),
        (
            "last-layer refinement passes with / untr.",
            f"{w_work['last_layer_passes']} / {u_work['last_layer_passes']}",
        ),
        ("refined rows, all layers, with / untr.", f"{w_work['rows']} / {u_work['rows']}"),
        ("  refined rows with / untrimmed (ratio)", f"{w_work['rows'] / u_work['rows']:.3f}"),
    ]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer repeats (a smoke run)")
    ap.add_argument("--json", default=None, help="also write the numbers to this JSON file")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="torch device")
    ap.add_argument(
        "--repeats", type=int, default=None, help="timed rounds per variant (default 10, 3 with --quick)"
    )
    args = ap.parse_args(argv)

    repeats = args.repeats or (3 if args.quick else 10)
    vm, images, questions, choices = bench.build(args.device, n=8)
    rds = enable_routing(vm, RoutingConfig(alpha=ALPHA, depth=DEPTH, layers="all"))
    with torch.no_grad():  # trained-looking step encodings; the cost does not depend on their values
        for e in rds.step_encodings.values():
            e.normal_(0.0, 0.1)
    k = vm.config.replay_k
    result: dict[str, Any] = {
        "device": str(args.device),
        "threads": torch.get_num_threads(),
        "sizes": {**bench.SIZES, "latents": vm.config.latents, "replay_k": k},
        "rds": {"alpha": ALPHA, "depth": DEPTH, "layers": "all"},
        "batches": {},
    }
    rows: dict[str, list[str]] = {}
    for bs in (1, 8):
        part = (images[:bs], questions[:bs], choices[:bs])
        batch = vm.prepare(*part)
        prompt_tokens = batch.attention_mask.sum(1).tolist()
        n_vis = int(batch.input_ids[0].eq(vm.backbone.image_token_id).sum())
        chunk = min(k, n_vis) + 1  # K replayed tokens + the latent; the 128 visual tokens last all 4 steps
        entry = compare(vm, rds, part, repeats)
        entry["implied_extra_share"] = {
            "prefill": implied_share(prompt_tokens, ALPHA),
            "latent": implied_share([chunk], ALPHA),
        }
        entry["prompt_tokens"] = prompt_tokens
        entry["chunk_tokens"] = chunk
        result["batches"][str(bs)] = entry
        for name, val in table_rows(entry):
            rows.setdefault(name, []).append(val)
    print(
        f"tiny Qwen2-VL {bench.SIZES}, prompt {result['batches']['1']['prompt_tokens'][0]} tokens, "
        f"T_r={vm.config.latents}, K={k}; RDS α={ALPHA}, D={DEPTH}, all layers; device={args.device}, "
        f"{torch.get_num_threads()} threads, {repeats} interleaved rounds"
    )
    print(f"implied extra = min(α, n)/n per routed layer: n = prompt tokens (prefill), {k}+1 (latent chunk)")
    print(f"{'':42s}" + "".join(f"{'batch ' + str(b):>26s}" for b in (1, 8)))
    for name, vals in rows.items():
        print(f"{name:42s}" + "".join(f"{v:>26s}" for v in vals))
    bench.write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
