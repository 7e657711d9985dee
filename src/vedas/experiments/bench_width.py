"""``vedas bench --size real-width``: training-step and generation cost at the real widths of Qwen2-VL-2B
and Qwen2.5-VL-3B, every variant side by side in one run.

    vedas bench --size real-width [--quick] [--rounds 2] [--json FILE]
    .venv/bin/python benchmarks/real_width.py --part table     # the same

Real checkpoints cannot be downloaded here, so the models are random ones of the real classes at
the real widths (decoder hidden / MLP / heads / kv heads; vision width 1280, 16 heads) with few
layers (4 decoder layers, a 4-block vision tower; the vision MLP ratio is the tiny models' 2).
Setting: batch 2 of the synthetic benchmark at 448 px (256 merged visual tokens per image), the
final curriculum stage (T_r = 4 latent chunks of K = 32 replayed tokens), LoRA on the decoder (the
vision tower frozen, as in the paper), fp32. A step = forward + backward + AdamW update.

Training variants, one model per width shared by all (routing installed once and switched off
where a variant has none; gradient checkpointing switched on only for its variant):
``cot``; ``latent``; ``routing`` (``vedas`` with routing, no SCF-VR); ``scfvr`` (``vedas`` with
SCF-VR at the current default crop, no routing); ``full`` (both); ``full_ckpt`` (both, gradient
checkpointing); and, with the old crop default (``scfvr.zoom: 0``: every crop resized to the
sample's own input size), ``scfvr_old`` and ``full_old`` — before and after in the same run.

One warm-up step, then one step per variant per round, all variants interleaved round by round,
the order rotating; times are medians and each ratio is the median of the ratios within a round.
On CPU the ratios are of process CPU time (wall time is shown beside it): with one thread that
counts the work, not the waiting for a core, which on a shared machine swings a step's wall time
by 2× within minutes; on CUDA they are of wall time. Also per step: CPU time inside the vision
tower (crop re-encoding included) and inside the crop re-encoding alone, and the rise of peak memory over the step (CUDA: ``max_memory_allocated``;
CPU: peak RSS with glibc's mmap threshold lowered so that freed tensors leave the RSS).

Generation (same widths, batch 1, one 448-px image, ``vedas`` mode, 8 new tokens): prefill /
latent / decode / total of the cached engine and of the recompute oracle, and their ratios.

``--quick`` swaps the real widths for tiny ones (a smoke run of a few seconds, for tests).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import dataclasses
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch

WIDTHS: dict[str, tuple[str, dict[str, int]]] = {
    # decoder: hidden, intermediate, heads, kv_heads; vision: embed dim, heads
    "qwen2_vl_2b": (
        "qwen2_vl",
        dict(hidden=1536, intermediate=8960, heads=12, kv_heads=2, vision_hidden=1280, vision_heads=16),
    ),
    "qwen2_5_vl_3b": (
        "qwen2_5_vl",
        dict(hidden=2048, intermediate=11008, heads=16, kv_heads=2, vision_hidden=1280, vision_heads=16),
    ),
}
QUICK_WIDTH = dict(hidden=64, intermediate=128, heads=4, kv_heads=2, vision_hidden=32, vision_heads=2)


@dataclasses.dataclass(frozen=True)
class Setting:
    """Sizes of one run (:data:`REAL` or :data:`QUICK`)."""

    layers: int
    vision_depth: int
    image: int
    batch: int
    latents: int
    replay_k: int
    alpha: int
    new_tokens: int


REAL = Setting(layers=4, vision_depth=4, image=448, batch=2, latents=4, replay_k=32, alpha=32, new_tokens=8)
QUICK = Setting(layers=1, vision_depth=1, image=112, batch=2, latents=2, replay_k=4, alpha=4, new_tokens=2)

OLD = 0.0
"""``scfvr.zoom`` of the old default: every crop resized to the sample's own input size."""

VARIANTS: dict[str, tuple[str, bool, float | None, bool]] = {
    # name: (method, routing, crop zoom (None: no SCF-VR; -1: the current default), checkpointing)
    "cot": ("cot", False, None, False),
    "latent": ("latent", False, None, False),
    "routing": ("vedas", True, None, False),
    "scfvr_old": ("vedas", False, OLD, False),
    "scfvr": ("vedas", False, -1.0, False),
    "full_old": ("vedas", True, OLD, False),
    "full": ("vedas", True, -1.0, False),
    "full_ckpt": ("vedas", True, -1.0, True),
}


OPTIONAL = [v for v in VARIANTS if v not in ("cot", "latent")]
"""What ``--variants`` picks from; ``cot`` and ``latent`` always run (every ratio's denominators)."""


def records(n: int, image: int) -> list[Any]:
    """``n`` synthetic-benchmark training records with ``image``-px images and 3-step rationales."""
    from vedas.data import load, synth

    out = tempfile.mkdtemp(prefix="vedas-bench-width-")
    cfg = synth.SynthConfig(image_size=image, shape_size=14, min_steps=3, max_steps=3)
    synth.write(out, train=n, test=4, seed=0, cfg=cfg, progress=False)
    return list(load("synthetic", path=out, split="train"))


def final_stage_batch(vm: Any, recs: list[Any], method: str, cfg: Any) -> Any:
    """``recs`` collated for ``method`` at the final curriculum stage of ``cfg`` (every step latent)."""
    from vedas.method.curriculum import layout, num_stages, record_steps
    from vedas.train.objective import collate

    latents = cfg.latent.latents
    stage = num_stages(latents, cfg.curriculum)
    lays = [
        layout(method, record_steps(r.steps, r.rationale, latents), r.answer, stage, latents, cfg.curriculum)
        for r in recs
    ]
    return collate(vm, recs, lays, method)


def model_config(width: str, s: Setting, quick: bool) -> Any:
    """The TrainConfig ``vedas train`` would get for this width (LoRA, routing on every layer)."""
    from vedas.config import LatentConfig
    from vedas.method.routing import RoutingConfig
    from vedas.train.config import LoraSettings, ModelConfig, OptimConfig, TrainConfig

    arch, dims = WIDTHS[width]
    tiny = {**(QUICK_WIDTH if quick else dims), "layers": s.layers, "vision_depth": s.vision_depth}
    return TrainConfig(
        method="vedas",
        model=ModelConfig(arch=arch, tiny={**tiny, "max_pixels": s.image * s.image}),
        latent=LatentConfig(latents=s.latents, replay_k=s.replay_k, max_new_tokens=s.new_tokens),
        lora=LoraSettings(enabled=True),
        routing=RoutingConfig(layers="all", alpha=s.alpha, depth=1),
        optim=OptimConfig(seed=0),
    )


@dataclasses.dataclass
class Run:
    """One training variant on the width's shared model."""

    objective: Any
    batch: Any
    optimizer: torch.optim.Optimizer
    routing: bool
    ckpt: bool


def build_runs(cfg: Any, recs: list[Any], device: str, names: list[str]) -> tuple[Any, dict[str, Run]]:
    from vedas.method.scfvr import SCFVRConfig
    from vedas.train.objective import LatentObjective
    from vedas.train.recipe import setup_model, trainable_parameters

    vm = setup_model(cfg)
    vm.model.to(device)
    batches: dict[str, Any] = {}
    runs = {}
    for name in names:
        method, routed, zoom, ckpt = VARIANTS[name]
        if method not in batches:
            batches[method] = final_stage_batch(vm, recs, method, cfg)
        recon = (
            SCFVRConfig(weight=0.0) if zoom is None else SCFVRConfig() if zoom < 0 else SCFVRConfig(zoom=zoom)
        )
        torch.manual_seed(0)
        objective = LatentObjective(vm, method, vm.config, recon).to(device).train()
        opt = torch.optim.AdamW(trainable_parameters(objective, vm), lr=1e-5)
        runs[name] = Run(objective, batches[method], opt, routed, ckpt)
    return vm, runs


@contextlib.contextmanager
def clocks(vm: Any) -> Iterator[dict[str, float]]:
    """Seconds spent inside the vision tower and inside SCF-VR's crop re-encoding, while open."""
    bb = vm.backbone
    visual = bb.model.model.visual
    spent = {"tower": 0.0, "crops": 0.0, "tower_cpu": 0.0, "crops_cpu": 0.0}
    start: list[tuple[float, float]] = []

    def pre(*_: Any) -> None:
        start.append((time.perf_counter(), time.process_time()))

    def post(*_: Any) -> None:
        t0, c0 = start.pop()
        spent["tower"] += time.perf_counter() - t0
        spent["tower_cpu"] += time.process_time() - c0

    real = bb.encode_crops

    def encode(crops: Any) -> torch.Tensor:
        t0, c0 = time.perf_counter(), time.process_time()
        try:
            return real(crops)
        finally:
            spent["crops"] += time.perf_counter() - t0
            spent["crops_cpu"] += time.process_time() - c0

    hooks = [visual.register_forward_pre_hook(pre), visual.register_forward_hook(post)]
    bb.encode_crops = encode
    try:
        yield spent
    finally:
        del bb.encode_crops
        for h in hooks:
            h.remove()


def step(vm: Any, run: Run, device: str) -> dict[str, float]:
    """One training step of ``run``: wall seconds, tower and crop seconds."""
    from vedas.experiments.timing import sync
    from vedas.method import routing
    from vedas.train import grad_checkpoint

    if run.ckpt:
        grad_checkpoint.enable(vm.backbone)
    try:
        with routing.allowed(run.routing), clocks(vm) as spent:
            sync(device)
            t0, c0 = time.perf_counter(), time.process_time()
            out = run.objective(run.batch)
            out["loss"].backward()
            run.optimizer.step()
            run.optimizer.zero_grad(set_to_none=True)
            sync(device)
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    finally:
        if run.ckpt:
            grad_checkpoint.disable(vm.backbone)
    return {"step": wall, "cpu": cpu, **spent}


def lower_mmap_threshold() -> None:
    """Have glibc return every freed block over 64 KiB to the OS, so the RSS follows live tensors."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").mallopt(-3, 65536)  # M_MMAP_THRESHOLD


def train_table(
    width: str, s: Setting, rounds: int, device: str, quick: bool, names: list[str] | None = None
) -> dict[str, Any]:
    from vedas.experiments.timing import peak_rise

    names = [v for v in VARIANTS if v in (names or VARIANTS) or v in ("cot", "latent")]
    vm, runs = build_runs(model_config(width, s, quick), records(s.batch, s.image), device, names)
    # one warm-up step (the variants share the model; each one's own first-step state, AdamW's over
    # LoRA and F_SR, is small)
    step(vm, runs["cot"], device)
    times: dict[str, list[dict[str, float]]] = {v: [] for v in runs}
    peak: dict[str, int] = {}
    for r in range(rounds):
        names = list(runs)
        for name in names[r % len(names) :] + names[: r % len(names)]:
            box: list[dict[str, float]] = []
            rise = peak_rise(lambda: box.append(step(vm, runs[name], device)), device)  # noqa: B023
            times[name].append(box[0])
            peak[name] = max(peak.get(name, 0), rise)

    # on CPU the ratios use process CPU time: with one thread it counts the work, not the waiting
    # for a core on a loaded machine (wall time is kept beside it); on CUDA, wall time
    key = "step" if device.startswith("cuda") else "cpu"

    def ratio(a: str, b: str) -> float:
        return statistics.median(x[key] / y[key] for x, y in zip(times[a], times[b]))

    return {
        "ratio_of": "cpu" if key == "cpu" else "wall",
        "step_s": {v: {k: statistics.median(t[k] for t in ts) for k in ts[0]} for v, ts in times.items()},
        "step_s_all": times,
        "peak_rise_bytes": peak,
        "over_latent": {v: ratio(v, "latent") for v in runs},
        "over_cot": {v: ratio(v, "cot") for v in runs},
        "full_old_over_full": ratio("full_old", "full") if {"full", "full_old"} <= set(runs) else None,
    }


def generation(width: str, s: Setting, rounds: int, device: str, quick: bool) -> dict[str, Any]:
    """prefill / latent / decode / total (ms) of the cached engine and the recompute oracle."""
    from PIL import Image

    import vedas
    from vedas.experiments import timing

    cfg = model_config(width, s, quick)
    model, processor = vedas.tiny_model(cfg.model.arch, seed=0, **cfg.model.tiny)
    model.to(device)
    vm = vedas.VedasModel(model, processor, cfg.latent)
    rng = torch.Generator().manual_seed(0)
    pixels = torch.randint(0, 256, (s.image, s.image, 3), generator=rng, dtype=torch.uint8)
    one = ([Image.fromarray(pixels.numpy())], ["How many red squares are there?"], [["0", "1", "2", "3"]])
    calls = {e: timing.generate_call(vm, *one, mode="vedas", engine=e) for e in ("cached", "recompute")}
    runs = timing.interleaved(calls, device, rounds)
    return {
        "cached_ms": timing.medians(runs["cached"]),
        "recompute_ms": timing.medians(runs["recompute"]),
        "latent_speedup": timing.ratio(runs, "recompute", "cached", "latent"),
        "e2e_speedup": timing.ratio(runs, "recompute", "cached"),
    }


def measure(
    quick: bool, rounds: int, device: str, widths: list[str] | None = None, variants: list[str] | None = None
) -> dict[str, Any]:
    from vedas.method.scfvr import ZOOM

    s = QUICK if quick else REAL
    out: dict[str, Any] = {
        "device": device,
        "threads": torch.get_num_threads(),
        "setting": dataclasses.asdict(s),
        "quick": quick,
        "zoom_default": ZOOM,
        "zoom_old": OLD,
        "rounds": rounds,
    }
    for width in widths or list(WIDTHS):
        out[width] = {
            "train": train_table(width, s, rounds, device, quick, variants),
            "generate": generation(width, s, rounds, device, quick),
        }
    return out


LABELS = {
    "cot": "cot",
    "latent": "latent",
    "routing": "vedas routing only",
    "scfvr_old": "vedas SCF-VR only, old crop",
    "scfvr": "vedas SCF-VR only",
    "full_old": "vedas full, old crop",
    "full": "vedas full",
    "full_ckpt": "vedas full + grad ckpt",
}


def table(r: dict[str, Any]) -> str:
    s = r["setting"]
    lines = [
        f"{'quick stand-in widths' if r['quick'] else 'real widths'}, {s['layers']} decoder layers, "
        f"{s['vision_depth']}-block tower, batch {s['batch']}, {s['image']}-px images, T_r={s['latents']}, "
        f"K={s['replay_k']}, LoRA, device {r['device']}, {r['threads']} threads, {r['rounds']} rounds; "
        f"crop zoom: default {r['zoom_default']:g}, old {r['zoom_old']:g} (= the sample's input size)"
    ]
    for width in WIDTHS:
        if width not in r:
            continue
        t, g = r[width]["train"], r[width]["generate"]
        lines += [
            "",
            f"{width}: training step",
            f"{'variant':30s}{'wall s':>9s}{'cpu s':>9s}{'tower':>9s}{'crops':>9s}{'peak rise MiB':>15s}"
            f"{'/ latent':>10s}{'/ cot':>8s}   (tower, crops: cpu s; ratios of {t['ratio_of']} time)",
        ]
        for v, label in LABELS.items():
            if v not in t["step_s"]:
                continue
            st = t["step_s"][v]
            lines.append(
                f"{label:30s}{st['step']:9.2f}{st['cpu']:9.2f}{st['tower_cpu']:9.2f}{st['crops_cpu']:9.2f}"
                f"{t['peak_rise_bytes'][v] / 2**20:15.0f}{t['over_latent'][v]:9.2f}×{t['over_cot'][v]:7.2f}×"
            )
        if "full" in t["over_latent"]:
            lines.append(f"full / latent {t['over_latent']['full']:.2f}× (target ≤ 1.3×)")
        if t["full_old_over_full"] is not None:
            lines.append(
                f"with the old crop: full / latent {t['over_latent']['full_old']:.2f}×; "
                f"old crop / new crop (full) {t['full_old_over_full']:.2f}×"
            )
        c, rc = g["cached_ms"], g["recompute_ms"]
        lines += [
            f"{width}: generation, batch 1, vedas mode (ms)   prefill   latent   decode    total",
            f"{'cached':44s}{c['prefill']:9.0f}{c['latent']:9.0f}{c['decode']:9.0f}{c['total']:9.0f}",
            f"{'recompute':44s}{rc['prefill']:9.0f}{rc['latent']:9.0f}{rc['decode']:9.0f}{rc['total']:9.0f}",
            f"cached vs recompute: latent phase {g['latent_speedup']:.2f}× faster, end to end {g['e2e_speedup']:.2f}×",
        ]
    return "\n".join(lines)


def run(args: argparse.Namespace, device: str) -> dict[str, Any]:
    rounds = args.rounds or (1 if args.quick else 2)
    if not args.quick:  # process-wide: not in a smoke run (tests call this in their own process)
        lower_mmap_threshold()
    r = measure(args.quick, rounds, device, args.widths, args.variants)
    print(table(r))
    return r


def add_arguments(add: Callable[..., Any]) -> None:
    """The options ``vedas bench --size real-width`` adds (``add`` is ``parser.add_argument``)."""
    add(
        "--rounds",
        type=int,
        default=None,
        help="real-width: timed rounds after the warm-up (default 2; quick 1)",
    )
    add("--widths", nargs="+", choices=list(WIDTHS), default=None, help="real-width: only these widths")
    add(
        "--variants",
        nargs="+",
        choices=OPTIONAL,
        default=None,
        help="real-width: only these training variants (cot and latent always run)",
    )
