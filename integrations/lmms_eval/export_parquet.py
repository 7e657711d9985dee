"""Write any vedas dataset split as one parquet file in the M3CoT schema, images inside, for lmms-eval.

    python integrations/lmms_eval/export_parquet.py --data synthetic:data/synth --split test \\
        --out integrations/lmms_eval/data/synth_test.parquet

lmms-eval loads a local task's data with ``datasets.load_dataset`` and hands each row to
the task's functions without knowing where the row's files are, so the images travel inside
the file (an HF ``Image`` column, PNG bytes), as in the M3CoT release on the hub. The rows
are the records ``vedas eval`` reads (``vedas.data.load``), in the same order.
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path
from typing import Any


def export(records: list[Any], out: str | Path) -> Path:
    """``records`` (vedas ``Record``) as a parquet file: ``id, question, choices, context, answer, image, category``."""
    import datasets

    def png(image: Any) -> dict[str, Any]:
        buf = io.BytesIO()
        image.save(buf, format="PNG")
        return {"bytes": buf.getvalue(), "path": None}

    features = datasets.Features(
        {
            "id": datasets.Value("string"),
            "question": datasets.Value("string"),
            "choices": datasets.List(datasets.Value("string")),
            "context": datasets.Value("string"),
            "answer": datasets.Value("string"),
            "image": datasets.Image(),
            "category": datasets.Value("string"),
        }
    )
    rows = {
        "id": [r.id for r in records],
        "question": [r.question for r in records],
        "choices": [list(r.choices) for r in records],
        "context": [r.context for r in records],
        "answer": [r.answer for r in records],
        "image": [png(r.images[0]) for r in records],
        "category": [str(r.meta.get("category", "")) for r in records],
    }
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    datasets.Dataset.from_dict(rows, features=features).to_parquet(str(out))
    return out


def main(argv: list[str] | None = None) -> int:
    from vedas import cli_args
    from vedas.data import load
    from vedas.data.registry import split_spec

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    cli_args.add_data(ap, split="test")
    ap.add_argument("--out", required=True, help="the parquet file to write")
    args = ap.parse_args(argv)
    name, path = split_spec(args.data)
    records = list(load(name, path=path, split=args.split, limit=args.limit))
    if any(len(r.images) != 1 for r in records):
        print("export: every record must have exactly one image", file=sys.stderr)
        return 2
    print(f"wrote {export(records, args.out)} ({len(records)} rows)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
