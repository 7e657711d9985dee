"""``vedas bench``: speed and memory ratios measured side by side in one run.

    vedas bench [--quick] [--arch qwen3_vl|chameleon|…] [--checkpoints runs/demo/report.json] --json bench.json
    vedas bench --size real-width [--quick]     # training steps and generation at real widths

``--size real-width`` runs :mod:`vedas.experiments.bench_width` instead (its docstring says what it measures).

On one model (a tiny random model of ``--arch``; the same text decoder sizes for every arch) and one set of samples it measures:

(a) latent-phase and end-to-end latency, cached engine vs recompute engine (the reference
    code's way: every step re-runs the prefix with full attention maps);
(b) end-to-end latency and AR steps of ``vedas`` vs ``no_cot`` vs ``cot``;
(c) throughput (samples/s) at batch 16 vs batch 1;
(d) the attention-recording overhead over a plain prefill forward;
(e) peak memory of the last-query recorder vs eager attention maps.

For (b) the generated lengths must come from somewhere: with ``--checkpoints`` (the demo's
``report.json``, mapping method → checkpoint) each method runs its own trained checkpoint
(same architecture and sizes) and stops at its own EOS. Without it, one random model
generates exactly the token count of each method's target text on the synthetic benchmark
(answer only, or steps + answer), EOS suppressed — the report says which.

Each part runs its variants once untimed, then round by round in a rotating order; times are
medians over rounds and every ratio is the median of the ratios measured within one round, so
drift on a busy machine hits both sides alike. CUDA is synchronised before each clock read. Peak memory
is ``max_memory_allocated`` on CUDA; on CPU, the rise of the peak RSS (VmHWM, reset through
/proc/self/clear_refs) in a fresh subprocess per variant.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any

import torch

from vedas import cli_args
from vedas.cli_args import add_arch

# the timing helpers, re-exported: benchmarks/*.py read them as `bench.sync`, `bench.interleaved`…
from vedas.experiments.timing import (  # noqa: F401
    forced_generate,
    generate_call,
    interleaved,
    medians,
    peak_rise,
    ratio,
    sync,
    write_json,
)

HELP = "speed/memory ratios side by side: cached vs recompute, vedas vs no_cot vs cot, batching, recording"

# The engine benchmark's model and prompt: ≥ 300 prompt tokens, ≥ 128 visual tokens.
SIZES = dict(hidden=256, layers=4, heads=4, kv_heads=2, vision_depth=2, vision_hidden=64, vision_heads=2)


def image_hw(arch: str) -> tuple[int, int]:
    """The benchmark image for ``arch``: 8 × 16 = 128 merged visual tokens on every architecture
    (224 × 448 px at patch 14, 256 × 512 px at Qwen3-VL's patch 16)."""
    from vedas.backbones import arch_module

    side = getattr(arch_module(arch), "PATCH_SIZE", 14) * 2
    return 8 * side, 16 * side


QUESTION = (
    "Look carefully at the small coloured shapes scattered over the picture. First count the red squares, "
    "then count the blue circles, and finally tell how many more circles than squares there are. "
    "Think about each region of the image in turn before you answer."
)
CHOICES = ["0", "1", "2", "3"]
TEXT_SIZES = ("hidden", "layers", "heads", "kv_heads")


def arch_options(arch: str) -> dict[str, Any]:
    """``tiny_model`` arguments of the benchmark model of ``arch``: :data:`SIZES`, and images of
    ≥ 128 visual tokens (Qwen-VL: :func:`image_hw`, 128 merged tokens; Chameleon: 96 px, a 12×12
    VQ grid = 144 tokens, its vision part being the VQ-VAE)."""
    if arch == "chameleon":
        return {**{k: SIZES[k] for k in TEXT_SIZES}, "image_size": 96}
    hw = image_hw(arch)
    return {**SIZES, "max_pixels": hw[0] * hw[1]}


def build(
    device: str = "cpu", n: int = 16, latents: int = 4, replay_k: int = 32, arch: str = "qwen2_vl"
) -> tuple[Any, list, list, list]:
    """The benchmark model (tiny ``arch`` of :func:`arch_options`, Qwen2-VL by default) and ``n`` samples."""
    import numpy as np
    from PIL import Image

    import vedas
    from vedas.config import LatentConfig

    torch.manual_seed(0)
    hw = image_hw(arch)  # Chameleon's processor resizes and center-crops it to its own square
    model, processor = vedas.tiny_model(arch, seed=0, **arch_options(arch))
    model.to(device)
    vm = vedas.VedasModel(
        model, processor, LatentConfig(latents=latents, replay_k=replay_k, max_new_tokens=8)
    )
    rng = np.random.default_rng(0)
    images = [Image.fromarray((rng.random((*hw, 3)) * 255).astype("uint8")) for _ in range(n)]
    questions = [f"{QUESTION} (sample {i})" for i in range(n)]
    return vm, images, questions, [CHOICES] * n


def generate_times(vm, images, questions, choices, repeats: int, forced_length: int | None = None, **kw):
    """Median per-call wall times (ms) of prefill / latent / decode / total, and mean AR steps, after a warm-up."""
    call = generate_call(vm, images, questions, choices, forced_length, **kw)
    return medians(interleaved({"call": call}, vm.device, repeats)["call"])


def prefill_inputs(vm, images, questions, choices):
    """A prompt batch, its embeddings, positions and the backbone's extra decoder inputs (DeepStack)."""
    from vedas.engine.inputs import embed_prompt
    from vedas.engine.sources import VisualSources

    batch = vm.prepare(images, questions, choices)
    with torch.no_grad():
        embeds, visual, positions = embed_prompt(vm.backbone, batch)
    extra = vm.backbone.decoder_inputs(VisualSources.prompt(visual, embeds.shape[1]))
    return batch, embeds, positions, extra


def recording_overhead(vm, images, questions, choices, repeats: int) -> dict[str, float]:
    """Prefill forward with the recorder off and on, alternated call by call; median of paired ratios."""
    from vedas.engine.attention import LastQueryRecorder

    batch, embeds, positions, extra = prefill_inputs(vm, images, questions, choices)
    dec = vm.backbone.decoder()

    def forward(record: bool) -> float:
        ctx = LastQueryRecorder() if record else contextlib.nullcontext()
        sync(vm.device)
        t0 = time.perf_counter()
        with torch.no_grad(), ctx:
            dec(inputs_embeds=embeds, attention_mask=batch.attention_mask, position_ids=positions, **extra)
        sync(vm.device)
        return (time.perf_counter() - t0) * 1e3

    forward(False), forward(True)
    plain, rec = [], []
    for i in range(4 * repeats):
        # alternate which goes first so drift on a busy machine hits both alike
        if i % 2 == 0:
            a, b = forward(False), forward(True)
        else:
            b, a = forward(True), forward(False)
        plain.append(a)
        rec.append(b)
    return {
        "plain_ms": statistics.median(plain),
        "recording_ms": statistics.median(rec),
        "overhead": statistics.median(r / p for p, r in zip(plain, rec)) - 1,
    }


def memory_probe(variant: str, batch: int, device: str, arch: str = "qwen2_vl") -> int:
    """Bytes one prefill forward adds to the peak, recording the attention row by ``variant``."""
    from vedas.engine.attention import LastQueryRecorder
    from vedas.engine.runners import eager_attention

    vm, images, questions, choices = build(device, n=batch, arch=arch)
    b, embeds, positions, extra = prefill_inputs(vm, images, questions, choices)
    dec = vm.backbone.decoder()

    def forward() -> torch.Tensor:
        with torch.no_grad():
            if variant == "eager":
                with eager_attention(vm.model):
                    out = dec(
                        inputs_embeds=embeds,
                        attention_mask=b.attention_mask,
                        position_ids=positions,
                        output_attentions=True,
                        **extra,
                    )
                return torch.stack([a[:, :, -1] for a in out.attentions]).mean(dim=(0, 2))
            with LastQueryRecorder() as rec:
                dec(inputs_embeds=embeds, attention_mask=b.attention_mask, position_ids=positions, **extra)
            return rec.mean()

    forward()  # one-time allocations are not the variant's cost
    return peak_rise(forward, device)


def peak_memory(batch: int, device: str, arch: str = "qwen2_vl") -> dict[str, int]:
    if device.startswith("cuda"):
        return {v: memory_probe(v, batch, device, arch) for v in ("recording", "eager")}
    # glibc returns freed blocks above this size to the OS, so RSS tracks live tensors
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "OMP_NUM_THREADS": str(torch.get_num_threads())}
    out = {}
    for v in ("recording", "eager"):
        res = subprocess.run(
            [
                sys.executable,
                "-m",
                "vedas.experiments.bench",
                "--probe",
                v,
                "--batch",
                str(batch),
                "--device",
                device,
                "--arch",
                arch,
            ],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        out[v] = int(res.stdout.strip().splitlines()[-1])
    return out


def target_lengths(vm: Any, n: int = 64) -> dict[str, int]:
    """Mean token counts of each method's target text on the demo's synthetic benchmark (EOS included)."""
    from vedas.data.synth import SynthConfig, make_sample
    from vedas.experiments.demo import DEMO_SYNTH
    from vedas.method.curriculum import CurriculumConfig, layout, record_steps

    cc, out, cfg = CurriculumConfig(), {}, SynthConfig(**DEMO_SYNTH)
    for method in ("no_cot", "cot", "vedas"):
        lens = []
        for i in range(n):
            row = make_sample(i, cfg=cfg).row
            steps = record_steps(None, row["rationale"], 4)
            lay = layout(method, steps, row["answer"], 99, 4, cc)
            lens.append(len(vm.tokenizer.encode(lay.target, add_special_tokens=False)) + 1)
        out[method] = round(sum(lens) / len(lens))
    return out


def methods_side_by_side(vm, images, questions, choices, repeats: int, checkpoints: dict[str, str] | None):
    """(b): per-round latency and AR steps per method, on trained checkpoints or forced target lengths."""
    import vedas

    methods = ("no_cot", "cot", "vedas")
    if checkpoints:
        models = {m: vedas.load(checkpoints[m], device=vm.device) for m in methods}
        calls = {m: generate_call(models[m], images, questions, choices, mode=m) for m in methods}
        how = "each method's trained checkpoint, generation stops at EOS"
    else:
        lengths = target_lengths(vm)
        calls = {m: generate_call(vm, images, questions, choices, lengths[m], mode=m) for m in methods}
        how = (
            f"one random model, EOS suppressed, lengths forced to the demo benchmark's target texts {lengths}"
        )
    return interleaved(calls, vm.device, repeats), how


def bench(
    device: str, quick: bool, checkpoints: dict[str, str] | None, arch: str = "qwen2_vl"
) -> dict[str, Any]:
    repeats = 2 if quick else 7
    vm, images, questions, choices = build(device, n=16, arch=arch)
    one = (images[:1], questions[:1], choices[:1])
    batch = vm.prepare(*one)
    result: dict[str, Any] = {
        "device": str(device),
        "arch": arch,
        "threads": torch.get_num_threads(),
        "repeats": repeats,
        "sizes": {
            **arch_options(arch),
            "prompt_tokens": int(batch.attention_mask.sum()),
            "visual_tokens": int(batch.input_ids.eq(vm.backbone.image_token_id).sum()),
            "latents": vm.config.latents,
            "replay_k": vm.config.replay_k,
            "samples": len(images),
        },
    }
    engines = interleaved(
        {e: generate_call(vm, *one, engine=e) for e in ("cached", "recompute")}, device, repeats
    )
    methods, how = methods_side_by_side(vm, *one, repeats, checkpoints)
    batches = interleaved(
        {"batch1": generate_call(vm, *one), "batch16": generate_call(vm, images, questions, choices)},
        device,
        max(2, repeats // 2),
    )
    rec = recording_overhead(vm, *one, repeats)
    mem = peak_memory(8, device, arch)
    b1, b16 = medians(batches["batch1"]), medians(batches["batch16"])
    result.update(
        {
            "cached_ms": medians(engines["cached"]),
            "recompute_ms": medians(engines["recompute"]),
            "methods": {m: medians(runs) for m, runs in methods.items()},
            "methods_lengths": how,
            "batch_ms": {"batch1": b1, "batch16": b16},
            "throughput_samples_per_s": {"batch1": 1e3 / b1["total"], "batch16": 16e3 / b16["total"]},
            "recording": rec,
            "peak_memory_bytes": {**mem, "batch": 8},
            "latent_speedup_cached_vs_recompute": ratio(engines, "recompute", "cached", "latent"),
            "e2e_speedup_cached_vs_recompute": ratio(engines, "recompute", "cached"),
            "e2e_latency_ratio_vedas_over_no_cot": ratio(methods, "vedas", "no_cot"),
            "e2e_speedup_vedas_over_cot": ratio(methods, "cot", "vedas"),
            "ar_steps_ratio_cot_over_vedas": ratio(methods, "cot", "vedas", "ar_steps"),
            "throughput_ratio_batch16_over_batch1": 16 * ratio(batches, "batch1", "batch16"),
            "recording_overhead": rec["overhead"],
            "peak_memory_ratio_eager_over_recording": mem["eager"] / max(mem["recording"], 1),
        }
    )
    return result


def table(r: dict[str, Any]) -> str:
    m = r["methods"]
    rows = [
        (
            "(a) latent phase, cached vs recompute",
            f"{r['cached_ms']['latent']:.1f} vs {r['recompute_ms']['latent']:.1f} ms",
            f"{r['latent_speedup_cached_vs_recompute']:.1f}× faster",
        ),
        (
            "(a) end-to-end, cached vs recompute",
            f"{r['cached_ms']['total']:.1f} vs {r['recompute_ms']['total']:.1f} ms",
            f"{r['e2e_speedup_cached_vs_recompute']:.1f}× faster",
        ),
        (
            "(b) end-to-end vedas / no_cot / cot",
            f"{m['vedas']['total']:.1f} / {m['no_cot']['total']:.1f} / {m['cot']['total']:.1f} ms",
            f"vedas/no_cot {r['e2e_latency_ratio_vedas_over_no_cot']:.2f}×, "
            f"cot/vedas {r['e2e_speedup_vedas_over_cot']:.2f}×",
        ),
        (
            "(b) AR steps vedas / no_cot / cot",
            f"{m['vedas']['ar_steps']:.1f} / {m['no_cot']['ar_steps']:.1f} / {m['cot']['ar_steps']:.1f}",
            f"cot/vedas {r['ar_steps_ratio_cot_over_vedas']:.2f}×",
        ),
        (
            "(c) throughput batch 16 vs 1",
            f"{r['throughput_samples_per_s']['batch16']:.1f} vs "
            f"{r['throughput_samples_per_s']['batch1']:.1f} samples/s",
            f"{r['throughput_ratio_batch16_over_batch1']:.2f}×",
        ),
        (
            "(d) recording overhead (prefill)",
            f"{r['recording']['recording_ms']:.1f} vs {r['recording']['plain_ms']:.1f} ms",
            f"{100 * r['recording_overhead']:+.1f}%",
        ),
        (
            "(e) peak memory eager maps vs recorder",
            f"{r['peak_memory_bytes']['eager'] / 2**20:.1f} vs "
            f"{r['peak_memory_bytes']['recording'] / 2**20:.1f} MiB (batch 8)",
            f"{r['peak_memory_ratio_eager_over_recording']:.1f}×",
        ),
    ]
    w = max(len(a) for a, _, _ in rows)
    lines = [f"{'measure':{w}s} | {'measured':42s} | ratio", "-" * (w + 60)]
    lines += [f"{a:{w}s} | {b:42s} | {c}" for a, b, c in rows]
    lines.append(f"(b) lengths: {r['methods_lengths']}")
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true", help="fewer repeats (a smoke run)")
    parser.add_argument(
        "--size",
        choices=["tiny", "real-width"],
        default="tiny",
        help="tiny: the engine benchmark on a tiny model (default); real-width: training steps and "
        "generation at the real widths of Qwen2-VL-2B and Qwen2.5-VL-3B, few layers (--quick: tiny stand-ins)",
    )
    parser.add_argument("--json", default=None, help="write the numbers to this JSON file")
    add_arch(parser, "the tiny random model's architecture (default: qwen2_vl)")
    parser.add_argument(
        "--checkpoints",
        default=None,
        help="the demo's report.json (its 'checkpoints': method -> dir) for part (b)",
    )
    cli_args.add_device(parser)
    from vedas.experiments import bench_width

    bench_width.add_arguments(parser.add_argument)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.size == "real-width":
        from vedas.experiments import bench_width

        write_json(args.json, bench_width.run(args, cli_args.resolve_device(args.device)))
        return 0
    checkpoints = None
    if args.checkpoints:
        with open(args.checkpoints) as f:
            checkpoints = json.load(f)["checkpoints"]
    r = bench(cli_args.resolve_device(args.device), args.quick, checkpoints, args.arch)
    s = r["sizes"]
    print(
        f"tiny {r['arch']} h{s['hidden']}×{s['layers']}L, prompt {s['prompt_tokens']} tokens "
        f"({s['visual_tokens']} visual), T_r={s['latents']}, K={s['replay_k']}, device={r['device']}, "
        f"{r['threads']} threads"
    )
    print(table(r))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(r, f, indent=2)
        print(f"wrote {args.json}")
    return 0


def _main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--probe", choices=["recording", "eager"], required=True, help=argparse.SUPPRESS)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--arch", default="qwen2_vl")
    a = ap.parse_args(argv)
    print(memory_probe(a.probe, a.batch, a.device, a.arch))
    return 0


if __name__ == "__main__":  # the memory probe's subprocess entry
    sys.exit(_main())
