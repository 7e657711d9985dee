"""``vedas analyze crops``: what each latent step looked at (the paper's Fig. 6).

    vedas analyze crops --checkpoint runs/synthetic_tiny/vedas/final --data synthetic:data/synth \\
        --n 8 --out runs/analysis/crops

For every sample and latent step t the figure shows the image with the replayed tokens I^t
highlighted as cells of the image's merged grid, and the SCF-VR crop window (the W×W window
holding most of I^t, found by :func:`vedas.method.scfvr.best_windows` and mapped to pixels by
:func:`vedas.method.scfvr.window_to_pixels`, as training does) drawn as a dashed box, with the crop
itself beside it; the first column holds the question, the prediction and the
answer. Writes ``crops.png`` and ``crops.json`` (per sample and step: the replayed
visual-token indices, their cells, the window in cells and in pixels, how many replayed
tokens fall inside it).

Where the selection comes from: ``generate(..., return_details=True)`` returns each step's
replayed indices into the sample's visual tokens; :func:`vedas.engine.inputs.embed_prompt` gives
every visual token's image, row and column (the engine's own layout, not a re-derivation).
A sample with several images shows, per step, the image holding most of the step's tokens
(the image SCF-VR crops in training). :func:`replay_views` and :func:`draw_replay` are the
reusable pieces; ``vedas infer --show-replay out.png`` draws one sample with them.
"""

from __future__ import annotations

import argparse
import textwrap
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from vedas.analysis import base

HELP = "replayed tokens and the SCF-VR crop window per latent step, on the image (Fig. 6)"


@dataclass
class StepCrop:
    """One latent step of one sample: what was replayed and where SCF-VR would crop."""

    step: int
    image: int  # index of the shown image within the sample's images
    indices: list[int]  # replayed visual-token indices (into the sample's visual tokens)
    cells: list[tuple[int, int]]  # (row, col) of the replayed tokens on the shown image's merged grid
    window: tuple[int, int, int, int]  # (row, col, height, width) in merged cells
    box: tuple[int, int, int, int]  # (top, left, bottom, right) in original pixels
    inside: int  # replayed tokens of the shown image that fall inside the window


@dataclass
class ReplayView:
    """Everything the Fig. 6 row of one sample shows."""

    question: str
    prediction: str
    images: list[Image.Image]
    grids: list[tuple[int, int]]  # merged grid (G_h, G_w) of each image
    steps: list[StepCrop]  # steps that replayed something (a step finding every token visited has none)
    latent_steps: int = 0  # latent steps run, with or without a replay
    answer: str | None = None
    correct: bool | None = None
    id: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    regions: list[tuple[int, int, int, int]] = field(default_factory=list)
    """Per image, the (top, left, bottom, right) pixels its grid covers (the whole image unless the
    processor center-crops: Chameleon); empty means whole images."""

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "question": self.question,
            "prediction": self.prediction,
            "answer": self.answer,
            "correct": self.correct,
            "grids": [list(g) for g in self.grids],
            "image_sizes": [list(im.size) for im in self.images],  # (width, height)
            "latent_steps": self.latent_steps,
            "steps": [asdict(s) for s in self.steps],
            **self.extra,
        }


def _as_images(item: Any) -> list[Image.Image]:
    from vedas.model import open_image

    items = [] if item is None else list(item) if isinstance(item, (list, tuple)) else [item]
    return [open_image(x, "images") for x in items]


def replay_views(
    vm: Any,
    images: Sequence[Any],
    questions: Sequence[str],
    details: Any,
    choices: Sequence[Sequence[str] | None] | None = None,
    contexts: Sequence[str | None] | None = None,
    window: int = 3,
) -> list[ReplayView]:
    """Turn a ``generate(..., return_details=True)`` result into one :class:`ReplayView` per sample.

    ``images``/``questions``/``choices``/``contexts`` must be what was passed to ``generate``.
    """
    from vedas.engine.inputs import embed_prompt
    from vedas.method import scfvr

    base.require(window >= 1, "--window", f"must be ≥ 1, got {window}")
    batch = vm.prepare(images, questions, choices, contexts, mode="vedas")
    base.require(batch.image_grid_thw is not None, "images", "no sample has an image: nothing was replayed")
    with torch.no_grad():
        _, visual, _ = embed_prompt(vm.backbone, batch)
    grids = vm.backbone.merged_grids(batch.image_grid_thw)
    opened = [_as_images(item) for item in images]
    views: list[ReplayView] = []
    first = 0  # index of this sample's first image in the batch's image list
    for b, sample_images in enumerate(opened):
        own = list(range(first, first + len(sample_images)))
        first += len(sample_images)
        steps = []
        for t, idx in enumerate(details.replay_indices[b]):
            if not idx or not own:
                continue
            sel = torch.tensor(idx)
            img_of = visual.image[b, sel].tolist()
            shown = Counter(img_of).most_common(1)[0][0]
            on = [i for i, g in zip(idx, img_of) if g == shown]
            rows = visual.row[b, on].tolist()
            cols = visual.col[b, on].tolist()
            gh, gw = grids[shown]
            win = scfvr.best_windows(
                torch.tensor([rows]),
                torch.tensor([cols]),
                torch.ones(1, len(rows), dtype=torch.bool),
                torch.tensor([[gh, gw]]),
                window,
            )[0]
            image = sample_images[shown - own[0]]
            box = scfvr.image_box(vm.backbone, win, (gh, gw), (image.height, image.width))
            r, c, wh, ww = (int(v) for v in win.tolist())
            inside = sum(r <= y < r + wh and c <= x < c + ww for y, x in zip(rows, cols))
            steps.append(
                StepCrop(
                    step=t,
                    image=shown - own[0],
                    indices=list(idx),
                    cells=list(zip(rows, cols)),
                    window=(r, c, wh, ww),
                    box=tuple(int(v) for v in box),  # type: ignore[arg-type]
                    inside=int(inside),
                )
            )
        views.append(
            ReplayView(
                question=questions[b],
                prediction=details.texts[b],
                images=sample_images,
                grids=[grids[i] for i in own],
                regions=[vm.backbone.visible_box((im.height, im.width)) for im in sample_images],
                steps=steps,
                latent_steps=len(details.replay_indices[b]),
            )
        )
    return views


def _text_panel(ax: Any, view: ReplayView) -> None:
    ax.axis("off")
    lines = [*textwrap.wrap("Q: " + view.question, 30)[:9]]
    lines += textwrap.wrap("pred: " + (view.prediction or "∅"), 30)[:4]
    if view.answer is not None:
        mark = "" if view.correct is None else ("  ✓" if view.correct else "  ✗")
        lines.append(f"answer: {view.answer}{mark}")
    ax.text(0.0, 1.0, "\n".join(lines), va="top", ha="left", fontsize=7, family="monospace", wrap=True)


def _step_panels(ax: Any, crop_ax: Any, view: ReplayView, step: StepCrop) -> None:
    """The image with the replayed cells and the crop window, and beside it the crop itself."""
    from matplotlib.patches import Rectangle

    image = view.images[step.image]
    gh, gw = view.grids[step.image]
    top0, left0, bottom0, right0 = (
        view.regions[step.image] if view.regions else (0, 0, image.height, image.width)
    )
    ch, cw = (bottom0 - top0) / gh, (right0 - left0) / gw
    ax.imshow(image)
    for row, col in step.cells:
        ax.add_patch(
            Rectangle(
                (left0 + col * cw, top0 + row * ch),
                cw,
                ch,
                facecolor=base.COLORS["replay"],
                alpha=0.5,
                lw=0.6,
                edgecolor="white",
            )
        )
    top, left, bottom, right = step.box
    ax.add_patch(
        Rectangle(
            (left, top),
            right - left,
            bottom - top,
            fill=False,
            lw=2,
            ls="--",
            edgecolor=base.COLORS["visual"],
        )
    )
    ax.set_title(f"step {step.step + 1}: {len(step.cells)} replayed, {step.inside} in window", fontsize=7)
    crop_ax.imshow(image.crop((left, top, right, bottom)))
    crop_ax.set_title(f"crop {step.step + 1}", fontsize=7)
    for a in (ax, crop_ax):
        a.set_xticks([])
        a.set_yticks([])
    for spine in crop_ax.spines.values():
        spine.set_edgecolor(base.COLORS["visual"])
        spine.set_linewidth(1.5)
        spine.set_linestyle("--")


def draw_replay(
    views: Sequence[ReplayView], path: str | Path, title: str | None = None, dpi: int = 90
) -> Path:
    """Draw one row per sample: the text panel, then per latent step the marked image and its crop."""
    base.require(len(views) > 0, "views", "nothing to draw")
    steps = max(1, *(v.latent_steps for v in views), *(s.step + 1 for v in views for s in v.steps))
    ratios = [1.3] + [1.0, 0.5] * steps
    fig, axes = base.figure(
        len(views), 1 + 2 * steps, (1.1 + 2.6 * steps, 2.2 * len(views) + 0.3), width_ratios=ratios
    )
    for i, view in enumerate(views):
        _text_panel(axes[i, 0], view)
        by_step = {s.step: s for s in view.steps}
        for t in range(steps):
            ax, crop_ax = axes[i, 1 + 2 * t], axes[i, 2 + 2 * t]
            if t in by_step:
                _step_panels(ax, crop_ax, view, by_step[t])
            else:
                crop_ax.axis("off")
                ax.axis("off")
                why = "nothing replayed\n(all tokens visited)" if t < view.latent_steps else "no such step"
                ax.text(0.5, 0.5, f"step {t + 1}:\n{why}", ha="center", va="center", fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    return base.save_figure(fig, path, dpi=dpi)


# --- the command ---------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    base.add_model_arguments(parser, n_default=8, n_help="samples to draw, the first N of the split")
    parser.add_argument(
        "--latents", type=int, default=None, help="override the checkpoint's latent count T_r"
    )
    parser.add_argument("--window", type=int, default=3, help="SCF-VR window W in merged cells (default: 3)")
    parser.add_argument("--scoring", default="vedas", help="scoring rule that marks predictions ✓/✗")
    parser.add_argument("--max-new-tokens", type=int, default=None, help="cap on generated tokens")
    parser.set_defaults(func=base.run_command("crops", run))


def run(args: argparse.Namespace) -> int:
    from vedas.evaluation.scoring import get_rule, score

    try:
        get_rule(args.scoring)
    except ValueError as e:
        raise base.AnalysisError(f"--scoring: {e}") from None
    base.require(args.window >= 1, "--window", f"must be ≥ 1, got {args.window}")
    base.require(args.latents is None or args.latents >= 1, "--latents", f"must be ≥ 1, got {args.latents}")
    vm, records = base.load_model_and_records(args)
    base.require(vm.config.replay_k > 0, "--checkpoint", "its replay_k is 0: no visual replay to draw")
    views: list[ReplayView] = []
    bar = base.progress(len(records), "crops", not args.no_progress)
    for chunk in base.batches(records, args.batch_size):
        d = vm.generate_records(
            chunk,
            mode=args.method,
            latents=args.latents,
            return_details=True,
            max_new_tokens=args.max_new_tokens,
        )
        chunk_views = replay_views(vm, details=d, window=args.window, **vm.record_inputs(chunk))
        for r, view in zip(chunk, chunk_views):
            view.id, view.answer, view.correct = r.id, r.answer, bool(score(view.prediction, r, args.scoring))
            views.append(view)
        bar.update(len(chunk))
    bar.close()
    out = Path(args.out)
    title = f"replay per latent step (K={vm.config.replay_k}, W={args.window}; dashed: SCF-VR crop window)"
    png = draw_replay(views, out / "crops.png", title=title)
    summary = {
        "checkpoint": str(args.checkpoint),
        "data": args.data,
        "split": args.split,
        "method": args.method,
        "window": args.window,
        "replay_k": vm.config.replay_k,
        "latents": args.latents if args.latents is not None else vm.config.latents,
        "scoring_rule": args.scoring,
        "mean_inside_share": _mean_inside(views),
        "samples": [v.to_json() for v in views],
    }
    js = base.write_json(out / "crops.json", summary)
    print(
        f"{len(views)} samples; share of replayed tokens inside the crop window: "
        f"{summary['mean_inside_share']:.3f} (mean over samples and steps)"
    )
    print(f"wrote {png} and {js}")
    return 0


def _mean_inside(views: Sequence[ReplayView]) -> float:
    shares = [s.inside / len(s.cells) for v in views for s in v.steps if s.cells]
    return sum(shares) / len(shares) if shares else float("nan")
