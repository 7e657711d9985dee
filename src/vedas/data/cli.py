"""Data commands: write the synthetic benchmark, or show what a dataset loads as.

    vedas data synth --out data/synth --train 2000 --test 500 --seed 0
    vedas data synth --out data/hard --image-size 224 --max-objects 20 --min-steps 4
    vedas data show synthetic:data/synth --split test --limit 3
    vedas data show m3cot:/data/M3CoT --limit 2
    vedas data show easy_vqa --limit 3

``show`` prints the load summary (rows read, loaded, skipped and why) and the first
records as the model will see them (the prompt text, the answer, the steps).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import fields

HELP = "data tools: write the synthetic benchmark, show any dataset as records"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``synth`` and ``show`` subcommands to the ``vedas data`` parser."""
    from vedas.data.synth import SynthConfig

    parser.formatter_class = argparse.RawDescriptionHelpFormatter  # keep the examples' line breaks
    sub = parser.add_subparsers(dest="data_command", metavar="SUBCOMMAND", required=True)

    synth = sub.add_parser(
        "synth",
        help="write the synthetic multi-step benchmark (M3CoT JSONL + PNG images)",
        description="Write DIR/train.jsonl, DIR/test.jsonl and DIR/images/*.png; same seed, same bytes.",
    )
    synth.add_argument("--out", required=True, metavar="DIR", help="output folder (created if missing)")
    synth.add_argument(
        "--train", type=int, default=2000, metavar="N", help="training samples (default: 2000)"
    )
    synth.add_argument("--test", type=int, default=500, metavar="N", help="test samples (default: 500)")
    synth.add_argument(
        "--seed", type=int, default=0, help="random seed; same seed gives identical files (default: 0)"
    )
    # One flag per difficulty knob, named, typed and documented by the SynthConfig field.
    for f in fields(SynthConfig):
        flag = "--" + f.name.replace("_", "-")
        synth.add_argument(
            flag, type=type(f.default), default=f.default, help=f"{f.metadata['help']} (default: {f.default})"
        )
    synth.add_argument("--no-progress", action="store_true", help="do not show a progress bar")
    synth.set_defaults(func=_synth)

    show = sub.add_parser(
        "show",
        help="print the load summary and the first records of a dataset",
        description="Load NAME (from PATH when given as NAME:PATH) and print what vedas sees.",
    )
    show.add_argument(
        "dataset",
        metavar="NAME[:PATH]",
        help="dataset name (m3cot, scienceqa, gqa, mmstar, mmvp, onethinker, easy_vqa, synthetic) and its folder or file",
    )
    show.add_argument("--split", default="test", help="split to load (default: test)")
    show.add_argument("--limit", type=int, default=3, help="records to load and print (default: 3)")
    show.add_argument(
        "--skip-bad", action="store_true", help="skip and count bad rows instead of stopping at the first"
    )
    show.set_defaults(func=_show)


def _synth(args: argparse.Namespace) -> int:
    from vedas.data.synth import SynthConfig, write

    knobs = {f.name: getattr(args, f.name) for f in fields(SynthConfig)}
    try:
        cfg = SynthConfig(**knobs)
    except ValueError as exc:
        print(f"vedas data synth: {exc}", file=sys.stderr)
        return 2
    summary = write(args.out, args.train, args.test, seed=args.seed, cfg=cfg, progress=not args.no_progress)
    for split, info in summary["splits"].items():
        letters = ", ".join(f"{k} {v}" for k, v in info["answers"].items())
        templates = ", ".join(f"{k} {v}" for k, v in info["templates"].items())
        print(f"{split}: {info['samples']} samples; answers {letters}; templates {templates}")
    print(f"wrote {args.out}/{{train,test}}.jsonl and {args.out}/images/")
    return 0


def _show(args: argparse.Namespace) -> int:
    from vedas.data import DataError, load
    from vedas.data.registry import split_spec
    from vedas.prompts import answer_target, format_question

    name, path = split_spec(args.dataset)
    try:
        dataset = load(name, path=path, split=args.split, limit=args.limit, skip_bad=args.skip_bad)
    except (ValueError, FileNotFoundError, DataError) as exc:
        print(f"vedas data show: {exc}", file=sys.stderr)
        return 2
    print(dataset.describe())
    for record in dataset:
        sizes = ", ".join(f"{im.width}x{im.height}" for im in record.images)
        print(f"\n--- {record.id}  [{record.source}]  images: {sizes}")
        print(format_question(record.question, record.choices, record.context))
        print(f"target: {answer_target(record.answer)}")
        for i, step in enumerate(record.steps, start=1):
            print(f"step {i}: {step}")
        if record.meta:
            print(f"meta: {record.meta}")
    for _, message in dataset.skipped[:10]:
        print(f"skipped: {message}")
    return 0
