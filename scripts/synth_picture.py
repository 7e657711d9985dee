"""Draw the README picture of the synthetic benchmark: one image, its question and rationale.

    .venv/bin/python scripts/synth_picture.py                  # -> docs/images/synth_sample.png
    .venv/bin/python scripts/synth_picture.py --index 5 --out /tmp/sample.png

The sample is ``make_sample(index, "test", seed)`` with the default knobs, i.e. exactly
what ``vedas data synth --seed SEED`` writes as that test row; the image is upscaled with
nearest-neighbour sampling so its pixels stay visible.
"""

from __future__ import annotations

import argparse
import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display needed
import matplotlib.pyplot as plt
from PIL import Image

from vedas.data.synth import make_sample
from vedas.prompts import answer_target, format_question

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--index", type=int, default=5, help="test sample to draw (default: 5, a 4-step question)"
    )
    parser.add_argument("--seed", type=int, default=0, help="benchmark seed (default: 0)")
    parser.add_argument("--out", default=str(ROOT / "docs/images/synth_sample.png"), help="output PNG path")
    args = parser.parse_args()

    sample = make_sample(args.index, "test", seed=args.seed)
    row = sample.row
    size = sample.image.width
    big = sample.image.resize((size * 4, size * 4), Image.Resampling.NEAREST)

    fig, (ax_image, ax_text) = plt.subplots(1, 2, figsize=(8.4, 4.2), gridspec_kw={"width_ratios": [1, 1.05]})
    ax_image.imshow(big)
    ax_image.set_title(f"{row['id']}  ({size}x{size} px, shown x4)", fontsize=9)
    ax_image.axis("off")

    prompt = format_question(row["question"], row["choices"])
    steps = row["rationale"].split("\n\n")
    lines = ["Question", *textwrap.wrap(prompt.split("\n")[0], 58), *prompt.split("\n")[1:], ""]
    lines += [f"Rationale ({len(steps)} steps, template '{row['category']}')"]
    for i, step in enumerate(steps, start=1):
        lines += textwrap.wrap(f"{i}. {step}", 58, subsequent_indent="   ")
    lines += ["", answer_target(row["answer"])]
    ax_text.text(0.0, 1.0, "\n".join(lines), va="top", ha="left", family="monospace", fontsize=9)
    ax_text.axis("off")

    fig.tight_layout()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    # No timestamp in the file, so reruns give the same bytes.
    fig.savefig(out, dpi=110, metadata={"Software": None})
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
