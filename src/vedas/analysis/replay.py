"""``vedas analyze replay``: what visual replay picks, per latent step, where the data knows what matters.

    vedas analyze replay --checkpoint runs/synthetic_tiny/vedas/final --data synthetic:data/synth \\
        --n 64 --out runs/analysis/replay

The synthetic benchmark regenerates every image's layout from its seed
(:func:`vedas.data.synth.scene`: each shape's position and which shapes the question is about), so
each merged visual token (a cell of the image's grid) is labelled **relevant** (it overlaps a shape
the question asks about, or the cross of a ``locate`` question), **other** (another shape) or
**empty** (background and clutter only). For every latent step the command reports, over the
samples:

- the share of replayed tokens on relevant / other / empty cells, beside the share of cells of
  each label (what uniformly random picks would hit);
- positional concentration: the picks per image row and per column (normalised), and the share on
  the first or last row (the positional bias token pruning reports);
- saliency quality: the AUC of relevant vs empty tokens under the layer-mean last-query attention
  that chose the step's picks (mean over samples; 0.5 is chance), and the same AUC under each
  decoder layer's attention (``layer_auc``) and each head's (``head_auc``, layers × heads), from a
  rerun of the latent phase on the engine's own loop (its recorder keeping per-head rows) whose
  picks are checked against ``generate``'s (``saliency_samples_matching_generate``);
- attention on the image: the share of that last query's attention mass on the prompt's visual
  tokens (``image_attention``; per layer ``image_attention_layers``), the decay visual replay is
  meant to counter (step 1's query is the prompt's last token).

The saliency options of :class:`~vedas.config.LatentConfig` (``--replay-layers``, ``--replay-heads``,
``--replay-debias``, ``--replay-random-share``, ``--replay-diversity``) override the checkpoint's for
the run, so the paper's saliency and an option are compared on the same checkpoint; the report then
adds ``saliency_auc``, the AUC of the map the option ranks by (chosen layers/heads, debiased).

Writes ``replay.json`` and ``replay.png`` (hit shares per step, a row × step heat map, and the AUC
per layer and step).
The same labels drive the latent-use probe's ``replay_oracle`` (relevant cells first) and
``replay_anti`` (empty cells first) selections (:class:`RelevanceReplay`).
"""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vedas.analysis import base
from vedas.data import synth

HELP = "what replay picks per latent step: relevant-content share and row/column concentration"
EMPTY, OTHER, RELEVANT = 0, 1, 2
LABELS = {"empty": EMPTY, "other": OTHER, "relevant": RELEVANT}
ORDERS = {"oracle": (RELEVANT, OTHER, EMPTY), "anti": (EMPTY, OTHER, RELEVANT)}
"""The probe selections' label priority, first picked first."""
_ID = re.compile(r"^synth-(train|test)-(\d+)$")


def cell_labels(scene: synth.Scene, grid_h: int, grid_w: int) -> np.ndarray:
    """(grid_h, grid_w) labels of a scene's merged cells: RELEVANT where a relevant shape's box (or
    the cross) overlaps the cell, else OTHER where any shape does, else EMPTY."""
    labels = np.full((grid_h, grid_w), EMPTY, dtype=np.int64)
    ch, cw, h = scene.size / grid_h, scene.size / grid_w, scene.shape_size / 2
    items = [(s.x, s.y, i in scene.relevant) for i, s in enumerate(scene.shapes)]
    if scene.cross is not None:
        items.append((*scene.cross, True))
    for x, y, relevant in items:
        r0, r1 = (int(np.clip(v // ch, 0, grid_h - 1)) for v in (y - h, y + h))
        c0, c1 = (int(np.clip(v // cw, 0, grid_w - 1)) for v in (x - h, x + h))
        block = labels[r0 : r1 + 1, c0 : c1 + 1]
        np.maximum(block, RELEVANT if relevant else OTHER, out=block)
    return labels


class SynthRelevance:
    """Cell labels of the synthetic benchmark's records, regenerated from ``synth_config.json``."""

    def __init__(self, folder: str | Path) -> None:
        path = Path(folder) / "synth_config.json"
        try:
            summary = json.loads(path.read_text())
            self.seed = int(summary["seed"])
            self.cfg = synth.SynthConfig(**summary["config"])
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise base.AnalysisError(f"--data: cannot read the synthetic layout from {path}: {e}") from None

    def labels(self, record_id: str, grid_h: int, grid_w: int) -> np.ndarray | None:
        """The record's cell labels, or None for an id that is not a synthetic sample's."""
        m = _ID.match(record_id)
        if m is None:
            return None
        return cell_labels(synth.scene(int(m.group(2)), m.group(1), self.seed, self.cfg), grid_h, grid_w)


def record_labels(vm: Any, records: Sequence[Any], relevance: SynthRelevance) -> list[np.ndarray | None]:
    """Each record's cell labels on the grid its (first) image gets from the model's processor."""
    batch = vm.prepare_records(records, mode="vedas")
    if batch.image_grid_thw is None:
        return [None] * len(records)
    grids = vm.backbone.merged_grids(batch.image_grid_thw)
    out, first = [], 0
    for rec in records:
        out.append(relevance.labels(rec.id, *grids[first]) if len(rec.images) == 1 else None)
        first += len(rec.images)
    return out


class RelevanceReplay:
    """A probe's selection by label: ``oracle`` picks relevant cells first, then other shapes, then
    empty ones; ``anti`` the reverse (empty first). Within a label the attention orders the picks;
    the weights stay softmax(a_I) and the positions those of the picked tokens. A row without
    labels chooses by attention."""

    def __init__(self, labels: Sequence[np.ndarray | None], order: str) -> None:
        if order not in ORDERS:
            raise ValueError(f"order={order!r}: choose one of {list(ORDERS)}")
        rank = {label: len(ORDERS[order]) - i for i, label in enumerate(ORDERS[order])}
        self.priority = [
            None
            if lab is None
            else torch.tensor([rank[int(v)] for v in lab.reshape(-1)], dtype=torch.float32)
            for lab in labels
        ]

    record = None

    def keys(self, scores: torch.Tensor, valid: torch.Tensor, step: Any = None) -> torch.Tensor:
        # attention weights lie in [0, 1]: a priority step of 2 always outranks them
        keys = scores.detach().float().clone()
        for row, p in enumerate(self.priority):
            if p is not None:
                n = min(p.numel(), keys.shape[1])
                keys[row, :n] += 2 * p[:n].to(keys.device)
        return keys

    def content(self, visual: Any) -> None:
        return None


def selection_stats(
    samples: Sequence[tuple[Sequence[Sequence[int]], np.ndarray | None]],
) -> list[dict[str, Any]]:
    """Per latent step, over the samples with labels: the replayed tokens' share on each label, the
    share of cells with each label (random picks' expectation), and the picks per row and column.

    ``samples``: per sample, its replayed visual-token indices per step (raster order on its grid)
    and its cell labels (grid_h, grid_w), or None (left out).
    """
    steps = max((len(picks) for picks, lab in samples if lab is not None), default=0)
    rows_n = max((lab.shape[0] for _, lab in samples if lab is not None), default=0)
    cols_n = max((lab.shape[1] for _, lab in samples if lab is not None), default=0)
    out = []
    for t in range(steps):
        hits = dict.fromkeys(LABELS, 0)
        cells = dict.fromkeys(LABELS, 0.0)
        per_row, per_col = np.zeros(rows_n), np.zeros(cols_n)
        picks_n = edge = used = 0
        for picks, lab in samples:
            if lab is None or t >= len(picks) or not picks[t]:
                continue
            used += 1
            gh, gw = lab.shape
            idx = np.asarray(picks[t])
            r, c = idx // gw, idx % gw
            for name, v in LABELS.items():
                hits[name] += int((lab[r, c] == v).sum())
                cells[name] += float((lab == v).mean())
            np.add.at(per_row, r, 1)
            np.add.at(per_col, c, 1)
            edge += int(((r == 0) | (r == gh - 1)).sum())
            picks_n += len(idx)
        share = {k: (v / picks_n if picks_n else None) for k, v in hits.items()}
        out.append(
            {
                "step": t + 1,
                "samples": used,
                "picks": picks_n,
                "share": share,
                "cell_share": {k: (v / used if used else None) for k, v in cells.items()},
                "row_share": (per_row / max(picks_n, 1)).tolist(),
                "col_share": (per_col / max(picks_n, 1)).tolist(),
                "first_or_last_row_share": edge / picks_n if picks_n else None,
            }
        )
    return out


class _Capture:
    """The real runner, keeping the last-query attention each pass returns (the selection's scores)
    and the per-layer (per-head) rows its recorder kept."""

    def __init__(self, runner: Any) -> None:
        object.__setattr__(self, "runner", runner)
        object.__setattr__(self, "attention", [])
        object.__setattr__(self, "kept", [])

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        hidden, attn = self.runner(*args, **kwargs)
        self.attention.append(attn)
        self.kept.append(self.runner.rows)
        return hidden, attn

    def __getattr__(self, name: str) -> Any:
        return getattr(self.runner, name)

    def __setattr__(self, name: str, value: Any) -> None:  # the loop sets ``keep`` on the real runner
        setattr(self.runner, name, value)


def auc(pos: np.ndarray, neg: np.ndarray) -> float | None:
    """P(a positive scores above a negative) + ½ P(tie) (the Mann-Whitney AUC); None if a side is empty."""
    if not len(pos) or not len(neg):
        return None
    greater = (pos[:, None] > neg[None]).mean()
    ties = (pos[:, None] == neg[None]).mean()
    return float(greater + 0.5 * ties)


def _step_aucs(
    scores: np.ndarray | None, counts: list[int], labels: Sequence[np.ndarray | None]
) -> list[float | None]:
    out: list[float | None] = []
    for b, lab in enumerate(labels):
        if scores is None or lab is None or counts[b] != lab.size:
            out.append(None)
            continue
        flat, s = lab.reshape(-1), scores[b, : counts[b]]
        out.append(auc(s[flat == RELEVANT], s[flat == EMPTY]))
    return out


def _mean_auc(values: Sequence[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return float(np.mean(kept)) if kept else None


def layer_aucs(
    rows: np.ndarray, counts: list[int], labels: Sequence[np.ndarray | None]
) -> tuple[list[float | None], list[list[float | None]] | None]:
    """Per layer (and per head, for 4-D ``rows``) the AUC of relevant vs empty tokens, mean over the
    labelled samples: ``rows`` (B, layers, N) or (B, layers, H, N) over the visual tokens. A layer's
    map is its head mean."""
    per_layer = rows.mean(2) if rows.ndim == 4 else rows
    layers = [_mean_auc(_step_aucs(per_layer[:, i], counts, labels)) for i in range(per_layer.shape[1])]
    if rows.ndim == 3:
        return layers, None
    heads = [
        [_mean_auc(_step_aucs(rows[:, i, h], counts, labels)) for h in range(rows.shape[2])]
        for i in range(rows.shape[1])
    ]
    return layers, heads


def saliency(
    vm: Any, records: Sequence[Any], labels: Sequence[np.ndarray | None], method: str = "latent"
) -> tuple[list[list[list[int]]], list[dict[str, Any]]]:
    """The latent phase of ``records`` rerun on the engine's own loop (no decoding), under the
    config's replay policy (seeded by the record ids, as ``generate_records`` seeds it): each sample's
    replayed indices per step (to check against ``generate``'s), and per step each sample's AUC of
    relevant vs empty tokens under the layer-mean last-query attention that chose that step's picks
    (``mean``), each layer's and head's AUC (mean over samples), and the AUC of the map a saliency
    option ranks by (``saliency``; None without one)."""
    from vedas.engine.loop import LatentLoop
    from vedas.engine.replay import Step
    from vedas.engine.runners import make_runner
    from vedas.method import gap, routing
    from vedas.method.replay import SaliencyReplay, policy
    from vedas.methods import method as method_of

    cfg = vm.config
    batch = vm.prepare_records(records, mode="latent")
    runner = _Capture(make_runner("cached", vm.backbone))
    chosen = policy(cfg, [r.id for r in records])
    loop = LatentLoop(vm.backbone, cfg, runner, policy=chosen)
    runner.keep = "heads"  # every head's row, for the AUCs; the policy reads what it needs from them
    # routed as generate routes (the `vedas` mode with routers installed), so the picks are the same
    with torch.no_grad(), routing.allowed(method_of(method).routing and vm.use_routing):
        run = loop.latent_steps(loop.prefill(batch), cfg.latents, transform=gap.latent_transform(vm, cfg))
    visual = loop.visual
    counts = visual.count.tolist()
    steps = []
    for attn, kept in list(zip(runner.attention, runner.kept))[: len(run.replays)]:  # pass t picks step t + 1
        if attn is None or kept is None:
            steps.append(
                {"mean": [None] * len(records), "layers": [], "heads": None, "saliency": None, "mass": []}
            )
            continue
        scores = attn.gather(1, visual.seq_index)
        index = visual.seq_index[:, None, None].expand(-1, *kept.shape[1:3], -1)
        rows = kept.gather(-1, index)  # (B, layers, H, N)
        layers, heads = layer_aucs(rows.float().cpu().numpy(), counts, labels)
        ranked = None
        if isinstance(chosen, SaliencyReplay):
            step = Step(visual, torch.zeros_like(visual.valid), cfg.replay_k, rows)
            ranked = _mean_auc(_step_aucs(chosen.saliency(scores, step).cpu().numpy(), counts, labels))
        mean = _step_aucs(scores.float().cpu().numpy(), counts, labels)
        # the share of the last query's attention on the image's own tokens: all layers, then each
        on_image = visual.valid[:, None].float()
        mass = torch.cat(
            [(scores.float()[:, None] * on_image).sum(-1), (rows.float().mean(2) * on_image).sum(-1)], 1
        )
        steps.append(
            {"mean": mean, "layers": layers, "heads": heads, "saliency": ranked, "mass": mass.cpu().tolist()}
        )
    picks = [
        [[] if rep is None else rep.index[b][rep.mask[b]].tolist() for rep in run.replays]
        for b in range(len(records))
    ]
    return picks, steps


def measure(
    vm: Any, records: list[Any], args: argparse.Namespace, relevance: SynthRelevance
) -> dict[str, Any]:
    """Generate with replay details batch by batch and score every step's picks (the JSON report)."""
    samples: list[tuple[list[list[int]], np.ndarray | None]] = []
    aucs: dict[int, list[float]] = {}
    # per step: (number of labelled samples, their summed per-layer / per-head / option AUCs)
    weighted: dict[int, list[tuple[int, dict[str, Any]]]] = {}
    masses: dict[int, list[list[float]]] = {}  # per step, per sample: [all layers, layer 0, layer 1, …]
    agree = 0
    bar = base.progress(len(records), "replay", not args.no_progress)
    for batch in base.batches(records, args.batch_size):
        details = vm.generate_records(
            batch, mode=args.method, return_details=True, max_new_tokens=args.max_new_tokens
        )
        labels = record_labels(vm, batch, relevance)
        samples += list(zip(details.replay_indices, labels))
        picks, batch_steps = saliency(vm, batch, labels, args.method)
        # the rerun must pick what generate picked, or its attention is not the one that chose
        agree += sum(p == d for p, d in zip(picks, details.replay_indices))
        for t, step in enumerate(batch_steps):
            row = [a for a in step["mean"] if a is not None]
            aucs.setdefault(t, []).extend(row)
            weighted.setdefault(t, []).append((len(row), step))
            masses.setdefault(t, []).extend(step["mass"])
        bar.update(len(batch))
    bar.close()
    labelled = sum(lab is not None for _, lab in samples)
    base.require(labelled > 0, "--data", "no record has a known layout (synthetic ids synth-<split>-<index>)")
    return {
        "checkpoint": str(args.checkpoint),
        "data": args.data,
        "split": args.split,
        "method": args.method,
        "n": len(records),
        "labelled": labelled,
        "replay_k": vm.config.replay_k,
        "replay_select": vm.config.replay_select,
        "saliency": vm.config.saliency_options,
        "steps": [
            {
                **step,
                "attention_auc": (float(np.mean(aucs[t])) if aucs.get(t) else None),
                **_pooled(weighted.get(t, [])),
                **image_attention(masses.get(t, [])),
            }
            for t, step in enumerate(selection_stats(samples))
        ],
        "saliency_samples_matching_generate": agree,
    }


def image_attention(mass: list[list[float]]) -> dict[str, Any]:
    """A step's attention on the image, mean over samples: ``image_attention`` under the layer-mean
    last-query row that chose the step's picks, ``image_attention_layers`` under each layer's (the share
    of the query's attention mass on the prompt's visual tokens; replayed copies are not counted)."""
    if not mass:
        return {"image_attention": None, "image_attention_layers": None}
    mean = np.asarray(mass, dtype=np.float64).mean(0)
    return {"image_attention": float(mean[0]), "image_attention_layers": mean[1:].tolist()}


def _pool(values: list[tuple[int, Any]]) -> Any:
    """The sample-weighted mean of batch means (nested lists alike); None where no batch had one."""
    first = next((v for _, v in values if v is not None), None)
    if isinstance(first, list):
        return [_pool([(n, None if v is None else v[i]) for n, v in values]) for i in range(len(first))]
    kept = [(n, v) for n, v in values if v is not None and n > 0]
    total = sum(n for n, _ in kept)
    return sum(n * v for n, v in kept) / total if total else None


def _pooled(batches: list[tuple[int, dict[str, Any]]]) -> dict[str, Any]:
    """A step's per-layer, per-head and option AUCs over the batches, each weighted by its labelled samples."""
    return {
        "layer_auc": _pool([(n, s["layers"] or None) for n, s in batches]),
        "head_auc": _pool([(n, s["heads"]) for n, s in batches]),
        "saliency_auc": _pool([(n, s["saliency"]) for n, s in batches]),
    }


def _draw_layers(ax: Any, report: dict[str, Any]) -> None:
    steps = [s["step"] for s in report["steps"]]
    layers = max((len(s["layer_auc"] or []) for s in report["steps"]), default=0)
    from matplotlib import colormaps

    cmap = colormaps["viridis"]
    for i in range(layers):
        line = [
            np.nan if not s["layer_auc"] or s["layer_auc"][i] is None else s["layer_auc"][i]
            for s in report["steps"]
        ]
        colour = cmap(i / max(layers - 1, 1))
        ax.plot(steps, line, "o-", ms=3, lw=1, color=colour, label=f"layer {i}")
    mean = [np.nan if s["attention_auc"] is None else s["attention_auc"] for s in report["steps"]]
    ax.plot(steps, mean, "k--", lw=1.5, label="layer mean")
    if any(s.get("saliency_auc") is not None for s in report["steps"]):
        option = [np.nan if s["saliency_auc"] is None else s["saliency_auc"] for s in report["steps"]]
        ax.plot(steps, option, "r^-", lw=1.5, label="option's map")
    ax.axhline(0.5, color="#999999", lw=0.8, ls=":")
    ax.set_xlabel("latent step")
    ax.set_ylim(0, 1.02)
    ax.set_xticks(steps)
    ax.set_title("AUC of relevant vs empty tokens, per layer", fontsize=9)
    ax.legend(fontsize=6, loc="best", ncol=2 if layers > 8 else 1)
    ax.grid(True, ls="--", alpha=0.3)


def draw(report: dict[str, Any], path: Path) -> Path:
    fig, axes = base.figure(1, 3, (15, 3.8))
    ax = axes[0, 0]
    steps = [s["step"] for s in report["steps"]]
    colours = {"relevant": base.COLORS["target"], "other": base.COLORS["replay"], "empty": "#999999"}
    for name, colour in colours.items():
        ax.plot(
            steps, [s["share"][name] for s in report["steps"]], "o-", color=colour, label=f"{name}: picks"
        )
        ax.plot(
            steps, [s["cell_share"][name] for s in report["steps"]], ":", color=colour, label=f"{name}: cells"
        )
    auc_line = [s["attention_auc"] for s in report["steps"]]
    if any(a is not None for a in auc_line):
        ax.plot(
            steps,
            [np.nan if a is None else a for a in auc_line],
            "k^-",
            label="attention AUC (rel. vs empty)",
        )
    ax.set_xlabel("latent step")
    ax.set_ylim(0, 1.02)
    ax.set_xticks(steps)
    ax.set_title(f"replayed tokens by cell content (n={report['labelled']})", fontsize=9)
    ax.legend(fontsize=6, loc="best")
    ax.grid(True, ls="--", alpha=0.3)
    ax = axes[0, 1]
    grid = np.array([s["row_share"] for s in report["steps"]]).T if report["steps"] else np.zeros((1, 1))
    im = ax.imshow(grid, aspect="auto", cmap="viridis", vmin=0)
    ax.set_xticks(range(len(steps)), [str(t) for t in steps])
    ax.set_xlabel("latent step")
    ax.set_ylabel("image row (merged grid)")
    ax.set_title("share of picks per image row", fontsize=9)
    fig.colorbar(im, ax=ax)
    _draw_layers(axes[0, 2], report)
    return base.save_figure(fig, path)


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else format(value, ".3f")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    base.add_model_arguments(parser, n_default=64, n_help="samples analysed, the first N of the split")
    parser.add_argument("--max-new-tokens", type=int, default=8, help="cap on generated tokens (default: 8)")
    group = parser.add_argument_group(
        "saliency option", "run under a saliency option instead of the checkpoint's (LatentConfig's fields)"
    )
    group.add_argument(
        "--replay-layers", type=int, nargs="+", help="choose by these decoder layers' attention"
    )
    group.add_argument("--replay-heads", type=int, nargs="+", help="choose by these query heads' attention")
    group.add_argument("--replay-debias", choices=["none", "rowcol"], help="residualise on image row/column")
    group.add_argument("--replay-random-share", type=float, help="ε: share of the K picks drawn at random")
    group.add_argument("--replay-diversity", type=float, help="λ of the greedy diversity term, in [0, 1]")
    parser.set_defaults(func=base.run_command("replay", run))


def with_saliency(cfg: Any, args: argparse.Namespace) -> Any:
    """``cfg`` with the saliency options given on the command line (the rest kept)."""
    from vedas.config import SALIENCY_FIELDS, ConfigError, LatentConfig, to_dict

    given = {f: getattr(args, f) for f in SALIENCY_FIELDS if getattr(args, f, None) is not None}
    if not given:
        return cfg
    try:
        return LatentConfig(**{**to_dict(cfg), **given})
    except ConfigError as e:
        field = str(e).split(":", 1)[0]
        flag = "--" + field.replace("_", "-") if field in given else field
        raise base.AnalysisError(f"{flag}: {str(e).split(': ', 1)[-1]}") from None


def run(args: argparse.Namespace) -> int:
    from vedas.data.registry import canonical_name, split_spec

    name, path = split_spec(args.data)
    try:
        synthetic = canonical_name(name) == "synthetic"
    except ValueError as e:
        raise base.AnalysisError(f"--data: {e}") from None
    base.require(
        synthetic and bool(path),
        "--data",
        f"needs synthetic:PATH (the layout is known there), got {args.data!r}",
    )
    relevance = SynthRelevance(path)
    from vedas.config import LatentConfig

    with_saliency(LatentConfig(), args)  # a bad option fails before the model loads
    vm, records = base.load_model_and_records(args)
    base.require(vm.config.replay_k > 0, "--checkpoint", "it replays nothing (replay_k = 0)")
    vm.config = with_saliency(vm.config, args)
    report = measure(vm, records, args, relevance)
    out = Path(args.out)
    png = draw(report, out / "replay.png")
    js = base.write_json(out / "replay.json", report)
    for s in report["steps"]:
        sh, cs = s["share"], s["cell_share"]
        if not s["picks"]:
            continue
        print(
            f"step {s['step']}: relevant {sh['relevant']:.3f} (cells {cs['relevant']:.3f}), "
            f"empty {sh['empty']:.3f} (cells {cs['empty']:.3f}), first/last row {s['first_or_last_row_share']:.3f}, "
            f"attention on the image {_fmt(s['image_attention'])}, "
            f"attention AUC {_fmt(s['attention_auc'])}, per layer "
            f"[{', '.join(_fmt(a) for a in s['layer_auc'] or [])}]"
            + ("" if s["saliency_auc"] is None else f", option's map {_fmt(s['saliency_auc'])}")
        )
    if report["saliency"]:
        print(f"saliency option: {report['saliency']}")
    print(f"wrote {png} and {js}")
    return 0
