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
import contextlib
import dataclasses
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from vedas.analysis import base

HELP = "hidden-state vs input-embedding norm ratios, text and visual (GAP's diagnostic), PNG + JSON"
GAP_MONET_7B = {"text": 546.4, "visual": 8.7}
"""GAP's measurement on Monet-7B (Qwen2.5-VL-7B): output / input L2 norm, text and visual tokens."""
KINDS = ("text", "visual")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    base.add_model_arguments(
        parser,
        n_default=16,
        n_help="samples to measure",
        batch_size=4,
        data_default="--n fresh synthetic samples",
        latent_method=False,
    )
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
    sums = _Norms()
    layers = vm.backbone.decoder_layers()
    with (
        _layer_outputs(layers) as captured,
        base.progress(len(records), "norms", progress) as bar,
    ):
        for chunk in base.batches(records, batch_size):
            _add_prompt_norms(vm, chunk, captured, sums)
            bar.update(len(chunk))
    return _summarise(sums, len(layers))


@contextlib.contextmanager
def _layer_outputs(layers: Any) -> Iterator[dict[int, torch.Tensor]]:
    """While open, a dict from each decoder layer's index to its latest output hidden states."""
    captured: dict[int, torch.Tensor] = {}

    def hook(i: int) -> Any:
        def fn(_module: Any, _args: Any, output: Any) -> None:
            captured[i] = output[0] if isinstance(output, tuple) else output

        return fn

    handles = [layer.register_forward_hook(hook(i)) for i, layer in enumerate(layers)]
    try:
        yield captured
    finally:
        for h in handles:
            h.remove()


def _add_prompt_norms(vm: Any, chunk: Any, captured: dict[int, torch.Tensor], sums: _Norms) -> None:
    """One plain forward of ``chunk``'s prompts; every real token's norms into ``sums``, by kind."""
    from vedas.engine.inputs import embed_prompt
    from vedas.engine.sources import VisualSources

    bb = vm.backbone
    batch = vm.prepare_records(chunk, mode="vedas")
    embeds, visual, positions = embed_prompt(bb, batch)
    out = bb.decoder()(
        inputs_embeds=embeds,
        attention_mask=batch.attention_mask,
        position_ids=positions,
        use_cache=False,
        **bb.decoder_inputs(VisualSources.prompt(visual, embeds.shape[1])),  # DeepStack on Qwen3-VL
    ).last_hidden_state
    is_img = batch.input_ids == bb.image_token_id
    kinds = {"text": batch.attention_mask.bool() & ~is_img, "visual": is_img}
    for kind, sel in kinds.items():
        sums.add(f"input.{kind}", embeds[sel].float().norm(dim=-1))
        sums.add(f"output.{kind}", out[sel].float().norm(dim=-1))
        for i, hidden in sorted(captured.items()):
            sums.add(f"layer{i}.{kind}", hidden[sel].float().norm(dim=-1))


def _summarise(sums: _Norms, n_layers: int) -> dict[str, Any]:
    """Means, medians and their output / input ratios, per kind, from the collected norms."""
    last = f"layer{n_layers - 1}"
    quantities = (("input", "input"), ("output", "output"), ("pre_final_norm", last))
    mean = {name: {k: sums.mean(f"{key}.{k}") for k in KINDS} for name, key in quantities}
    # outlier tokens (attention sinks) can dominate a mean: the medians show the typical token
    med = {name: {k: sums.median(f"{key}.{k}") for k in KINDS} for name, key in quantities}

    def ratios(of: dict[str, dict[str, float | None]], top: str) -> dict[str, float | None]:
        return {k: _ratio(of[top][k], of["input"][k]) for k in KINDS}

    return {
        "input_norm": mean["input"],
        "output_norm": mean["output"],
        "pre_final_norm": mean["pre_final_norm"],
        "ratio": ratios(mean, "output"),
        "ratio_pre_final_norm": ratios(mean, "pre_final_norm"),
        "median_norm": med,
        "ratio_of_medians": ratios(med, "output"),
        "ratio_of_medians_pre_final_norm": ratios(med, "pre_final_norm"),
        "by_layer": {
            k: [mean["input"][k], *[sums.mean(f"layer{i}.{k}") for i in range(n_layers)]] for k in KINDS
        },
        "tokens": {k: sums.count(f"input.{k}") for k in KINDS},
    }


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
                d = vm.generate_records(chunk, mode="vedas", max_new_tokens=1, return_details=True)
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

    if args.data is None:
        synth.write(tmp, train=0, test=args.n, seed=0)
        return list(load("synthetic", path=tmp, split="test"))
    return base.load_records(args)


def run_body(args: argparse.Namespace) -> int:
    ckpt = base.check_model_arguments(args)
    with tempfile.TemporaryDirectory() as tmp:
        records = _records(args, tmp)
        vm = base.load_model(args)
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
