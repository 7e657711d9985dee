"""``vedas analyze norms``: how far fed-back hidden states are from the input space (GAP's diagnostic).

    vedas analyze norms --checkpoint runs/synthetic_tiny/vedas/final --out runs/analysis/norms
    vedas analyze norms --checkpoint CKPT --data synthetic:data/synth --split test --n 32 --out DIR

GAP (arXiv 2605.12374) measures, on Monet-7B (Qwen2.5-VL-7B), output hidden states with an
L2 norm ~546.4× that of the input text embeddings and ~8.7× that of the visual input
embeddings: latents fed back as inputs sit far outside the space the model reads. This
command measures the same ratios for any checkpoint, text and visual tokens separately:

- one plain forward of each prompt (the inference prompt, ending in ``<|latent_start|>``);
  for every real token: the input-embedding norm (text embedding, or the merger's visual
  feature in an image slot), the norm after every decoder layer (the residual stream), and
  the final-norm output — what the engine feeds back as a latent;
- ``ratio`` = mean output norm / mean input norm over text tokens and over visual tokens
  (ratio of means, as GAP reports); ``ratio_pre_final_norm`` the same for the last layer's
  residual stream; ``ratio_of_medians`` (and ``…_pre_final_norm``) the typical token's, a check
  that a few outlier tokens (attention sinks) do not make the means;
- the latents themselves: the norm of z^1…z^T as generated (mode ``vedas``) and their ratio to
  the mean visual and text input norms; if the checkpoint applies GAP transforms
  (``latent_norm``/``latent_head``), both the raw latents and the fed ones.

Without ``--data`` it draws ``--n`` samples of the synthetic benchmark in a temporary folder.
Writes ``norms.json`` and ``norms.png`` (norm by layer; ratios next to GAP's Monet-7B; latent
norms by step against the input norms).
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
from pathlib import Path
from typing import Any

import torch

from vedas.analysis import base

HELP = "hidden-state vs input-embedding norm ratios, text and visual (GAP's diagnostic), PNG + JSON"
GAP_MONET_7B = {"text": 546.4, "visual": 8.7}
"""GAP's measurement on Monet-7B (Qwen2.5-VL-7B): output / input L2 norm, text and visual tokens."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--checkpoint", required=True, help="vedas checkpoint directory (or a base HF model dir)"
    )
    parser.add_argument(
        "--data",
        default=None,
        metavar="NAME[:PATH]",
        help="dataset and its folder, e.g. synthetic:data/synth (default: --n fresh synthetic samples)",
    )
    parser.add_argument("--split", default="test", help="dataset split to read (default: test)")
    parser.add_argument("--n", type=int, default=16, help="samples to measure (default: 16)")
    parser.add_argument("--batch-size", type=int, default=4, help="samples per forward (default: 4)")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--out", required=True, help="output directory for norms.json and norms.png")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    parser.set_defaults(func=base.run_command("norms", run_body))


# --- the numbers -----------------------------------------------------------------------------


class _Norms:
    """Per-token norms collected per (quantity, token kind); means and medians at the end."""

    def __init__(self) -> None:
        self.values: dict[str, list[torch.Tensor]] = {}

    def add(self, key: str, norms: torch.Tensor) -> None:
        self.values.setdefault(key, []).append(norms.detach().double().cpu())

    def _all(self, key: str) -> torch.Tensor:
        return torch.cat(self.values.get(key) or [torch.zeros(0, dtype=torch.float64)])

    def count(self, key: str) -> int:
        return int(self._all(key).numel())

    def mean(self, key: str) -> float | None:
        x = self._all(key)
        return float(x.mean()) if x.numel() else None

    def median(self, key: str) -> float | None:
        x = self._all(key)
        return float(x.median()) if x.numel() else None


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


@torch.no_grad()
def prompt_norms(vm: Any, records: list[Any], batch_size: int = 4, progress: bool = False) -> dict[str, Any]:
    """Input, per-layer and output norms of the prompts' text and visual tokens (one plain forward each)."""
    from vedas.engine.inputs import embed_prompt

    bb = vm.backbone
    layers = bb.decoder_layers()
    sums = _Norms()
    captured: dict[int, torch.Tensor] = {}

    def hook(i: int):
        def fn(_module: Any, _args: Any, output: Any) -> None:
            captured[i] = output[0] if isinstance(output, tuple) else output

        return fn

    handles = [layer.register_forward_hook(hook(i)) for i, layer in enumerate(layers)]
    bar = base.progress(len(records), "norms", progress)
    try:
        for chunk in base.batches(records, batch_size):
            batch = vm.prepare(
                [r.images for r in chunk],
                [r.question for r in chunk],
                [r.choices or None for r in chunk],
                [r.context or None for r in chunk],
                mode="vedas",
            )
            embeds, _, positions = embed_prompt(bb, batch)
            out = bb.decoder()(
                inputs_embeds=embeds,
                attention_mask=batch.attention_mask,
                position_ids=positions,
                use_cache=False,
            ).last_hidden_state
            is_img = batch.input_ids == bb.image_token_id
            kinds = {"text": batch.attention_mask.bool() & ~is_img, "visual": is_img}
            for kind, sel in kinds.items():
                sums.add(f"input.{kind}", embeds[sel].float().norm(dim=-1))
                sums.add(f"output.{kind}", out[sel].float().norm(dim=-1))
                for i in range(len(layers)):
                    sums.add(f"layer{i}.{kind}", captured[i][sel].float().norm(dim=-1))
            bar.update(len(chunk))
    finally:
        for h in handles:
            h.remove()
        bar.close()
    last = len(layers) - 1
    res: dict[str, Any] = {}
    for name, key in (("input_norm", "input"), ("output_norm", "output"), ("pre_final_norm", f"layer{last}")):
        res[name] = {k: sums.mean(f"{key}.{k}") for k in ("text", "visual")}
    res["ratio"] = {k: _ratio(res["output_norm"][k], res["input_norm"][k]) for k in ("text", "visual")}
    res["ratio_pre_final_norm"] = {
        k: _ratio(res["pre_final_norm"][k], res["input_norm"][k]) for k in ("text", "visual")
    }
    # outlier tokens (attention sinks) can dominate a mean: the medians show the typical token
    med = {
        name: {k: sums.median(f"{key}.{k}") for k in ("text", "visual")}
        for name, key in (("input", "input"), ("output", "output"), ("pre_final_norm", f"layer{last}"))
    }
    res["median_norm"] = med
    res["ratio_of_medians"] = {k: _ratio(med["output"][k], med["input"][k]) for k in ("text", "visual")}
    res["ratio_of_medians_pre_final_norm"] = {
        k: _ratio(med["pre_final_norm"][k], med["input"][k]) for k in ("text", "visual")
    }
    res["by_layer"] = {
        k: [res["input_norm"][k], *[sums.mean(f"layer{i}.{k}") for i in range(len(layers))]]
        for k in ("text", "visual")
    }
    res["tokens"] = {k: sums.count(f"input.{k}") for k in ("text", "visual")}
    return res


@torch.no_grad()
def latent_norms(vm: Any, records: list[Any], batch_size: int = 4) -> dict[str, Any]:
    """Norms of the latents z^1…z^T as generated: raw, and as fed if the config has GAP transforms."""
    cfg = vm.config
    plain = dataclasses.replace(cfg, latent_norm="none", latent_head="none")
    variants = {"raw": plain} if plain == cfg else {"raw": plain, "fed": cfg}
    res: dict[str, Any] = {"latents": cfg.latents}
    try:
        for name, c in variants.items():
            vm.config = c
            per_step = []
            for chunk in base.batches(records, batch_size):
                d = vm.generate(
                    [r.images for r in chunk],
                    [r.question for r in chunk],
                    [r.choices or None for r in chunk],
                    mode="vedas",
                    contexts=[r.context or None for r in chunk],
                    max_new_tokens=1,
                    return_details=True,
                )
                per_step.append(d.latents.float().norm(dim=-1))  # (B, T)
            norms = torch.cat(per_step)
            res[name] = {"by_step": norms.mean(0).tolist(), "mean": float(norms.mean())}
    finally:
        vm.config = cfg
    return res


def measure(vm: Any, records: list[Any], batch_size: int = 4, progress: bool = False) -> dict[str, Any]:
    """Everything ``norms.json`` holds (minus where the inputs came from)."""
    res = prompt_norms(vm, records, batch_size, progress)
    lat = latent_norms(vm, records, batch_size) if vm.config.latents > 0 else {"latents": 0}
    for name in ("raw", "fed"):
        if name in lat:
            lat[name]["ratio_to_visual_input"] = _ratio(lat[name]["mean"], res["input_norm"]["visual"])
            lat[name]["ratio_to_text_input"] = _ratio(lat[name]["mean"], res["input_norm"]["text"])
    res["latent"] = lat
    res["reference"] = {"GAP, Monet-7B (Qwen2.5-VL-7B), output / input norm": GAP_MONET_7B}
    return res


# --- the figure ------------------------------------------------------------------------------


def plot(res: dict[str, Any], title: str, path: Path) -> Path:
    fig, axes = base.figure(1, 3, (13, 3.8))
    ax = axes[0, 0]
    for kind in ("text", "visual"):
        ys = res["by_layer"][kind]
        if ys[0] is None:
            continue
        ax.plot(range(len(ys)), ys, marker=".", color=base.COLORS[kind], label=f"{kind} (residual stream)")
        ax.scatter(
            [len(ys) - 1],
            [res["output_norm"][kind]],
            marker="*",
            s=90,
            color=base.COLORS[kind],
            label=f"{kind}, after final norm (fed back)",
        )
    ax.set_yscale("log")
    ax.set_xlabel("layer (0 = input embeddings)")
    ax.set_ylabel("mean L2 norm")
    ax.set_title("norm along the decoder")
    ax.legend(fontsize=7)

    ax = axes[0, 1]
    labels, values, colors = [], [], []
    for kind in ("text", "visual"):
        for name, val in (
            ("fed", res["ratio"][kind]),
            ("pre-norm", res["ratio_pre_final_norm"][kind]),
            ("Monet", GAP_MONET_7B[kind]),
        ):
            if val is not None:
                labels.append(f"{kind}\n{name}")
                values.append(val)
                colors.append(base.COLORS[kind] if name != "Monet" else "#999999")
    ax.bar(range(len(values)), values, color=colors)
    for i, v in enumerate(values):
        ax.text(i, v, f"{v:.1f}×", ha="center", va="bottom", fontsize=7)
    ax.set_xticks(range(len(values)), labels, fontsize=7)
    ax.set_yscale("log")
    ax.set_ylabel("output / input norm")
    ax.set_title("ratio of means (fed = after final norm; Monet = GAP's Monet-7B)", fontsize=8)

    ax = axes[0, 2]
    lat = res["latent"]
    for name, style in (("raw", "-o"), ("fed", "--s")):
        if name in lat:
            ys = lat[name]["by_step"]
            ax.plot(range(1, len(ys) + 1), ys, style, color=base.COLORS["latent"], label=f"latents, {name}")
    for kind in ("text", "visual"):
        if res["input_norm"][kind] is not None:
            ax.axhline(res["input_norm"][kind], color=base.COLORS[kind], ls=":", label=f"{kind} input norm")
    ax.set_yscale("log")
    ax.set_xlabel("latent step t")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_ylabel("mean L2 norm")
    ax.set_title("latents z^t vs input embeddings")
    ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    return base.save_figure(fig, path, dpi=110)


# --- the command -----------------------------------------------------------------------------


def _records(args: argparse.Namespace, tmp: str) -> list[Any]:
    from vedas.data import load, synth
    from vedas.data.registry import canonical_name, split_spec

    if args.data is None:
        synth.write(tmp, train=0, test=args.n, seed=0)
        return list(load("synthetic", path=tmp, split="test"))
    name, path = split_spec(args.data)
    try:
        canonical_name(name)
        records = load(name, path=path, split=args.split, limit=args.n)
    except (OSError, ValueError) as e:
        raise base.AnalysisError(f"--data: cannot read {args.data!r} split {args.split!r}: {e}") from None
    base.require(len(records) > 0, "--data", f"{args.data!r} split {args.split!r} has no records")
    return list(records)


def run_body(args: argparse.Namespace) -> int:
    import vedas

    base.require(args.n >= 1, "--n", f"must be ≥ 1, got {args.n}")
    base.require(args.batch_size >= 1, "--batch-size", f"must be ≥ 1, got {args.batch_size}")
    ckpt = Path(args.checkpoint)
    base.require(ckpt.exists(), "--checkpoint", f"{ckpt} does not exist")
    with tempfile.TemporaryDirectory() as tmp:
        records = _records(args, tmp)
        device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
        vm = vedas.load(ckpt, device=device)
        res = measure(vm, records, args.batch_size, progress=not args.no_progress)
    data = args.data or f"synthetic (fresh, seed 0, {args.n} samples)"
    res = {"checkpoint": str(ckpt), "data": data, "split": args.split, "n": len(records), **res}
    out = Path(args.out)
    js = base.write_json(out / "norms.json", res)
    png = plot(res, f"{ckpt} on {data}", out / "norms.png")
    for kind in ("text", "visual"):
        r, g = res["ratio"][kind], GAP_MONET_7B[kind]
        shown = "n/a" if r is None else f"{r:.1f}×"
        print(f"{kind:6s} output / input norm: {shown}  (GAP, Monet-7B: {g}×)")
    print(f"wrote {js} and {png}")
    return 0
