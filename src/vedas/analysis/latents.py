"""``vedas analyze latents``: where the latent tokens sit among text and visual embeddings (Fig. 5).

    vedas analyze latents --checkpoint runs/synthetic_tiny/vedas/final --data synthetic:data/synth \\
        --n 32 --out runs/analysis/latents

Three groups of D-dimensional vectors from the first ``--n`` samples:

- ``latent``: the latents z^1…z^T fed back during generation (``Details.latents``: final-norm
  hidden states, coloured by step in the figure);
- ``text``: input embeddings of the distinct text tokens of those prompts (image and latent
  special tokens excluded);
- ``visual``: the visual input embeddings of their images (after the merger), the vectors
  visual replay feeds back.

The 2-D map is a joint projection of all three groups: PCA by exact SVD of the centred data
(components signed so their largest loading is positive, so reruns agree), or t-SNE with
``--projection tsne`` when scikit-learn is installed. Distances are measured in the original
D-dimensional space (and, under ``projected``, in 2-D): mean pairwise distance within each
group and between groups, centroid distances, mean norms, and each latent step's centroid
distance to the text and visual centroids. Latents are output-space states and are usually
far larger in norm than input embeddings (the GAP paper's point); ``--normalize unit``
compares directions only. Writes ``latents.png`` and ``latents.json``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch

from vedas.analysis import base

HELP = "2-D map of latent tokens among text and visual embeddings, with distances (Fig. 5)"
GROUPS = ("text", "visual", "latent")
EXACT = "donot_use_mm_for_euclid_dist"  # the matmul shortcut loses digits for near-identical vectors


# --- the numbers -----------------------------------------------------------------------------


def pca_2d(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Project (N, D) onto its first two principal components: ((N, 2) coordinates, explained share (2,)).

    Exact SVD of the centred data in float64; each component is signed so that its largest
    loading (by magnitude) is positive.
    """
    x = x.double()
    centred = x - x.mean(0, keepdim=True)
    _, s, vh = torch.linalg.svd(centred, full_matrices=False)
    comps = vh[:2]
    sign = torch.sign(comps.gather(1, comps.abs().argmax(1, keepdim=True)))
    comps = comps * torch.where(sign == 0, torch.ones_like(sign), sign)
    var = s**2
    share = var[:2] / var.sum().clamp(min=1e-300)
    coords = centred @ comps.T
    if coords.shape[1] < 2:  # a single point or one dimension: pad with zeros
        coords = torch.nn.functional.pad(coords, (0, 2 - coords.shape[1]))
        share = torch.nn.functional.pad(share, (0, 2 - share.shape[0]))
    return coords, share


def tsne_2d(x: torch.Tensor, seed: int) -> torch.Tensor:
    """t-SNE to 2-D (scikit-learn, optional); an :class:`AnalysisError` naming ``--projection`` without it."""
    _check_sklearn()
    from sklearn.manifold import TSNE  # type: ignore[import-not-found]

    perplexity = float(min(30, max(2, x.shape[0] // 4)))
    out = TSNE(n_components=2, perplexity=perplexity, random_state=seed, init="pca").fit_transform(
        x.double().numpy()
    )
    return torch.from_numpy(out)


def _mean_pairwise(a: torch.Tensor, b: torch.Tensor | None = None) -> float:
    """Mean Euclidean distance over distinct pairs within ``a``, or over all pairs of ``a`` × ``b``."""
    if b is None:
        n = a.shape[0]
        if n < 2:
            return float("nan")
        return float(torch.cdist(a, a, compute_mode=EXACT).sum() / (n * (n - 1)))
    return float(torch.cdist(a, b, compute_mode=EXACT).mean())


def distances(groups: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Within-group and between-group mean pairwise distances, centroid distances and mean norms."""
    g = {k: v.double() for k, v in groups.items() if v.shape[0] > 0}
    names = list(g)
    cent = {k: v.mean(0) for k, v in g.items()}
    return {
        "within": {k: _mean_pairwise(v) for k, v in g.items()},
        "between": {
            f"{a}-{b}": _mean_pairwise(g[a], g[b]) for i, a in enumerate(names) for b in names[i + 1 :]
        },
        "centroid": {
            f"{a}-{b}": float((cent[a] - cent[b]).norm()) for i, a in enumerate(names) for b in names[i + 1 :]
        },
        "mean_norm": {k: float(v.norm(dim=1).mean()) for k, v in g.items()},
        "count": {k: int(v.shape[0]) for k, v in g.items()},
    }


def step_distances(latents: torch.Tensor, groups: dict[str, torch.Tensor]) -> list[dict[str, float]]:
    """For each latent step t (latents (n, T, D)): centroid distance to the text and visual centroids."""
    text_c, vis_c = groups["text"].double().mean(0), groups["visual"].double().mean(0)
    out = []
    for t in range(latents.shape[1]):
        c = latents[:, t].double().mean(0)
        out.append(
            {"step": t + 1, "to_text": float((c - text_c).norm()), "to_visual": float((c - vis_c).norm())}
        )
    return out


# --- collecting the vectors ----------------------------------------------------------------------


def collect(
    vm: Any, records: list[Any], args: argparse.Namespace
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """The three groups (text, visual, latent flattened) and the latents as (n, T, D)."""
    from vedas.engine.inputs import embed_prompt

    text_ids: set[int] = set()
    ids_ = vm.token_ids
    skip = {vm.backbone.image_token_id, ids_.start, ids_.latent, ids_.end}
    visual, latents = [], []
    bar = base.progress(len(records), "latents", not args.no_progress)
    for chunk in base.batches(records, args.batch_size):
        d = vm.generate_records(
            chunk,
            mode=args.method,
            latents=args.latents,
            return_details=True,
            max_new_tokens=args.max_new_tokens,
        )
        latents.append(d.latents.detach().float().cpu())
        batch = vm.prepare_records(chunk, mode=args.method)
        with torch.no_grad():
            _, vis, _ = embed_prompt(vm.backbone, batch)
        visual.append(vis.features[vis.valid].float().cpu())
        ids = batch.input_ids[batch.attention_mask.bool()].tolist()
        text_ids.update(i for i in ids if i not in skip)
        bar.update(len(chunk))
    bar.close()
    lat = torch.cat(latents, 0)
    with torch.no_grad():
        text = vm.backbone.embed(torch.tensor(sorted(text_ids), device=vm.device)).float().cpu()
    groups = {"text": text, "visual": torch.cat(visual, 0), "latent": lat.reshape(-1, lat.shape[-1])}
    return groups, lat


def subsample(x: torch.Tensor, limit: int, seed: int) -> torch.Tensor:
    if x.shape[0] <= limit:
        return x
    g = torch.Generator().manual_seed(seed)
    return x[torch.randperm(x.shape[0], generator=g)[:limit].sort().values]


# --- the figure ---------------------------------------------------------------------------------


def draw(coords: dict[str, torch.Tensor], steps: int, dist: dict[str, Any], path: Path, title: str) -> Path:
    import matplotlib

    fig, axes = base.figure(1, 2, (10.5, 4.6), width_ratios=[1.6, 1])
    ax = axes[0, 0]
    for name in ("text", "visual"):
        xy = coords[name]
        ax.scatter(
            xy[:, 0], xy[:, 1], s=9, alpha=0.55, color=base.COLORS[name], label=f"{name} ({len(xy)})", lw=0
        )
    lat = coords["latent"]
    cmap = matplotlib.colormaps["Greens"]
    per_step = lat.shape[0] // max(steps, 1)
    for t in range(steps):
        xy = lat[t::steps] if per_step else lat
        shade = cmap(0.45 + 0.55 * (t / max(steps - 1, 1)))
        ax.scatter(
            xy[:, 0],
            xy[:, 1],
            s=34,
            marker="D",
            color=shade,
            edgecolor="black",
            lw=0.5,
            label=f"latent z{t + 1} ({len(xy)})",
        )
    ax.legend(fontsize=7, loc="best", markerscale=0.9)
    ax.set_title(title, fontsize=9)
    ax.grid(True, ls="--", alpha=0.3)
    ax = axes[0, 1]
    pairs = list(dist["centroid"])
    vals = [dist["centroid"][p] for p in pairs]
    ax.barh(pairs, vals, color=["#999999" if "latent" not in p else base.COLORS["latent"] for p in pairs])
    for i, v in enumerate(vals):
        ax.text(v, i, f" {v:.2f}", va="center", fontsize=7)
    ax.set_xlabel("centroid distance (D-dim space)")
    ax.set_title("centroid distances", fontsize=9)
    return base.save_figure(fig, path)


# --- the command ---------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    base.add_model_arguments(parser, n_default=32, n_help="samples whose latents and embeddings are mapped")
    parser.add_argument(
        "--latents", type=int, default=None, help="override the checkpoint's latent count T_r"
    )
    parser.add_argument(
        "--projection",
        default="pca",
        choices=["pca", "tsne"],
        help="2-D projection (tsne needs scikit-learn)",
    )
    parser.add_argument(
        "--normalize",
        default="none",
        choices=["none", "unit"],
        help="none: raw vectors; unit: every vector scaled to norm 1 (compare directions only)",
    )
    parser.add_argument(
        "--max-points", type=int, default=2000, help="cap per group, random subsample (default: 2000)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed for subsampling and t-SNE")
    parser.add_argument("--max-new-tokens", type=int, default=None, help="cap on generated tokens")
    parser.set_defaults(func=base.run_command("latents", run))


def run(args: argparse.Namespace) -> int:
    base.require(args.max_points >= 2, "--max-points", f"must be ≥ 2, got {args.max_points}")
    base.require(args.latents is None or args.latents >= 1, "--latents", f"must be ≥ 1, got {args.latents}")
    if args.projection == "tsne":
        _check_sklearn()  # before any compute
    vm, records = base.load_model_and_records(args)
    groups, lat = collect(vm, records, args)
    base.require(lat.shape[1] > 0, "--latents", "no latent steps were run (the checkpoint's count is 0)")
    if args.normalize == "unit":
        groups = {k: torch.nn.functional.normalize(v, dim=1) for k, v in groups.items()}
        lat = torch.nn.functional.normalize(lat, dim=-1)
    kept = {k: subsample(v, args.max_points, args.seed) if k != "latent" else v for k, v in groups.items()}
    base.require(
        kept["latent"].shape[0] <= args.max_points,
        "--max-points",
        f"{kept['latent'].shape[0]} latents exceed it; lower --n or raise --max-points",
    )
    order = list(GROUPS)
    stacked = torch.cat([kept[k] for k in order], 0)
    if args.projection == "pca":
        xy, share = pca_2d(stacked)
        explained = [float(v) for v in share]
    else:
        xy, explained = tsne_2d(stacked, args.seed), None
    coords, start = {}, 0
    for k in order:
        coords[k] = xy[start : start + kept[k].shape[0]]
        start += kept[k].shape[0]
    dist = distances(kept)
    dist_2d = distances(coords)
    per_step = step_distances(lat, kept)
    out = Path(args.out)
    png = draw(
        coords,
        lat.shape[1],
        dist,
        out / "latents.png",
        f"{args.projection.upper()} of text / visual embeddings and latents (normalize={args.normalize})",
    )
    report = {
        "checkpoint": str(args.checkpoint),
        "data": args.data,
        "split": args.split,
        "n_samples": len(records),
        "method": args.method,
        "latents": int(lat.shape[1]),
        "projection": args.projection,
        "normalize": args.normalize,
        "explained_variance": explained,
        "distances": dist,
        "projected": dist_2d,
        "latent_steps": per_step,
        "coords": {k: v.tolist() for k, v in coords.items()},
    }
    js = base.write_json(out / "latents.json", report)
    _print(dist, per_step, explained)
    print(f"wrote {png} and {js}")
    return 0


def _check_sklearn() -> None:
    try:
        import sklearn  # type: ignore[import-not-found]  # noqa: F401
    except ImportError:
        raise base.AnalysisError(
            "--projection: t-SNE needs scikit-learn, which is not installed; use --projection pca"
        ) from None


def _print(dist: dict[str, Any], per_step: list[dict[str, float]], explained: list[float] | None) -> None:
    print("counts:", ", ".join(f"{k} {v}" for k, v in dist["count"].items()))
    print("mean norm:", ", ".join(f"{k} {v:.3f}" for k, v in dist["mean_norm"].items()))
    print("mean pairwise distance within:", ", ".join(f"{k} {v:.3f}" for k, v in dist["within"].items()))
    print("mean pairwise distance between:", ", ".join(f"{k} {v:.3f}" for k, v in dist["between"].items()))
    print("centroid distance:", ", ".join(f"{k} {v:.3f}" for k, v in dist["centroid"].items()))
    for s in per_step:
        print(f"latent step {s['step']}: centroid to text {s['to_text']:.3f}, to visual {s['to_visual']:.3f}")
    if explained is not None:
        print(f"PCA explained variance: PC1 {explained[0]:.3f}, PC2 {explained[1]:.3f}")
