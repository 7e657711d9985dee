"""What a synthetic render's kinds and colours weigh in the frozen random vision tower's features.

    OMP_NUM_THREADS=1 .venv/bin/python scripts/tower_readability.py --preset far \\
        --synth context_sentences=0 frame=6 shape_size=54 [--tiny vision_hidden=256] [--images 120]

The demo trains only the merger on top of a frozen random tower, so whatever ``cot`` reads of an image
must already be in the tower's output. For every shape of ``--images`` training images, this takes what
the merger reads of the merged cell holding the shape in the prompt (the processor's resize to the
preset's input side): the cell's 2 × 2 patch features, each layer-normed as the merger normalises them,
side by side. For the shape's kind and its colour it prints:

- ``share``: the share of the features' variance that the attribute's class means explain, beside the
  share the same labels shuffled get (``floor``: about (classes − 1) / shapes). Gradient descent on the
  merger finds the large directions first; an attribute near the floor is a weak signal however
  separable it is.
- ``probe``: the held-out accuracy of a ridge classifier on all features (4-fold cross-validation): what a
  perfect linear read-out could get (chance: 1 / classes).

Measured numbers and what they mean: docs/results.md#far-render.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import numpy as np
import torch
from tqdm import tqdm


def parse(argv: list[str] | None) -> argparse.Namespace:
    from vedas.experiments import sizes

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sizes.add_preset(ap)
    ap.add_argument("--images", type=int, default=120, help="training images to read (default: 120)")
    ap.add_argument("--seed", type=int, default=0, help="the benchmark's seed (default: 0)")
    ap.add_argument("--vision-seed", type=int, default=0, help="the random tower's seed (default: 0)")
    ap.add_argument("--json", default=None, help="also write the numbers to this file")
    # the demo's size, as sizes.sized reads it from vedas demo's flags
    ap.set_defaults(quick=False, arch="qwen2_vl", train=None, test=None, epochs=None, latent_epochs=None)
    ap.set_defaults(max_new_tokens=None)
    return ap.parse_args(argv)


def cell_features(model: Any, processor: Any, image: Any) -> torch.Tensor:
    """(cells, 4 · vision_hidden): per merged cell in raster order, its 2 × 2 patch features (the merger's
    input, each layer-normed as the merger normalises it) side by side, as the merger reads them."""
    tower = model.model.visual
    grabbed: list[torch.Tensor] = []
    hook = tower.merger.register_forward_hook(lambda _m, inputs, _o: grabbed.append(inputs[0]))
    try:
        with torch.no_grad():
            batch = processor.image_processor(images=[image], return_tensors="pt")
            tower(batch["pixel_values"], grid_thw=batch["image_grid_thw"])
            x = tower.merger.ln_q(grabbed[0])
    finally:
        hook.remove()
    return x.reshape(-1, 4 * x.shape[-1])


def share(x: np.ndarray, y: np.ndarray) -> float:
    """The share of ``x``'s variance explained by the class means of ``y``."""
    x = x - x.mean(0)
    means = np.stack([x[y == k].mean(0) for k in np.unique(y)])
    return float((means[np.searchsorted(np.unique(y), y)] ** 2).sum() / (x**2).sum())


def floor(x: np.ndarray, y: np.ndarray, draws: int = 5) -> float:
    """:func:`share` with ``y`` shuffled (mean of ``draws``): what class means of this many samples explain
    by chance, about (classes − 1) / samples. A share near it is no signal that gradient descent sees early."""
    rng = np.random.default_rng(0)
    return float(np.mean([share(x, rng.permutation(y)) for _ in range(draws)]))


def probe(x: np.ndarray, y: np.ndarray, folds: int = 4, ridge: float = 1e-3) -> float:
    """Held-out accuracy of a one-vs-rest ridge classifier on ``x`` (``ridge`` relative to the mean feature power)."""
    x = x - x.mean(0)
    lam = ridge * float((x**2).sum(1).mean())
    classes = np.unique(y)
    target = (y[:, None] == classes[None]) * 2.0 - 1.0
    order = np.random.default_rng(0).permutation(len(y))
    hits = []
    for f in range(folds):
        test = order[f::folds]
        train = np.setdiff1d(order, test)
        a = x[train]
        w = np.linalg.solve(a.T @ a + lam * np.eye(a.shape[1]), a.T @ target[train])
        hits.append(classes[(x[test] @ w).argmax(1)] == y[test])
    return float(np.concatenate(hits).mean())


def measure(args: argparse.Namespace) -> dict[str, Any]:
    import dataclasses

    import vedas
    from vedas.data import synth
    from vedas.experiments import sizes

    size = dataclasses.replace(sizes.sized(args), vision_seed=args.vision_seed)
    cfg = size.synth_config()
    model, processor = vedas.tiny_model(size.arch, **size.tiny_model_args())
    grid = cfg.input_side // synth.MERGED_CELL_PX
    rows, kinds, colours = [], [], []
    for i in tqdm(range(args.images), desc="images", unit="image"):
        sample = synth.make_sample(i, "train", args.seed, cfg)
        scene = synth.scene(i, "train", args.seed, cfg)
        cells = cell_features(model, processor, sample.image)
        for s in scene.shapes:  # each shape alone in its merged cell (the presets' grid)
            rows.append(cells[int(s.y * grid // scene.size) * grid + int(s.x * grid // scene.size)].numpy())
            kinds.append(s.shape)
            colours.append(s.color)
    y = {"kind": np.array(kinds), "colour": np.array(colours)}
    out: dict[str, Any] = {"settings": {"preset": size.preset, "synth": size.synth, "tiny": size.tiny}}
    out["shapes"] = len(kinds)
    x = np.stack(rows)
    out["prompt"] = {
        attr: {"classes": len(np.unique(v)), "share": share(x, v), "floor": floor(x, v), "probe": probe(x, v)}
        for attr, v in y.items()
        if len(np.unique(v)) > 1
    }
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    result = measure(args)
    print(f"{result['settings']}: {result['shapes']} shapes of {args.images} images")
    for attr, r in result["prompt"].items():
        print(
            f"  {attr:6s} share of variance {100 * r['share']:6.2f} % (shuffled {100 * r['floor']:.2f} %)   "
            f"ridge probe {100 * r['probe']:5.1f} % (chance {100 / r['classes']:.0f} %)"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
