"""Data commands: write the synthetic benchmark, or show what a dataset loads as.

    vedas data synth --out data/synth --train 2000 --test 500 --seed 0
    vedas data synth --out data/hard --image-size 224 --max-objects 20 --min-steps 4
    vedas data synth --out data/fine --preset fine --train 1600 --test 400   # the demo's benchmark
    vedas data show synthetic:data/synth --split test --limit 3
    vedas data show m3cot:/data/M3CoT --limit 2
    vedas data show easy_vqa --limit 3
    vedas data difficulty --checkpoint runs/cot/final --data synthetic:data/synth --samples 8 \\
        --temperature 1.0 --seed 0 --out difficulty.json

``show`` prints the load summary (rows read, loaded, skipped and why) and the first
records as the model will see them (the prompt text, the answer, the steps).
``difficulty`` samples a base model N times per training question (GAP's capacity
alignment, :mod:`vedas.method.gap`) and marks the questions it never answers correctly; pass the
file to ``vedas train --data.difficulty`` to give only those latent supervision.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import fields

from vedas import cli_args

HELP = "data tools: write the synthetic benchmark, show any dataset as records, split by difficulty"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``synth``, ``show`` and ``difficulty`` subcommands to the ``vedas data`` parser."""
    from vedas.data.synth import PRESETS, SynthConfig

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
    synth.add_argument(
        "--preset",
        default=None,
        choices=sorted(PRESETS),
        help="start from a named set of knobs (easy: the earlier demo's 112-px benchmark; fine: 168 px, "
        "14-px shapes, 3-4 steps, the demo's; far: fine's 36 visual tokens behind a long irrelevant context, "
        "rendered at 504 px with textures finer than the prompt's resolution; long: fine's image behind far's "
        "context; detail: far's textures inside a solid frame on larger squares, no context, for SCF-VR's "
        "crop); the flags below override "
        "it (default: the defaults below)",
    )
    # One flag per difficulty knob, named, typed and documented by the SynthConfig field; a flag
    # not given is absent (SUPPRESS), so a preset's value is not overridden by a default.
    for f in fields(SynthConfig):
        flag = "--" + f.name.replace("_", "-")
        kind = (
            {"action": argparse.BooleanOptionalAction}
            if isinstance(f.default, bool)
            else {"type": type(f.default)}
        )
        synth.add_argument(
            flag, default=argparse.SUPPRESS, help=f"{f.metadata['help']} (default: {f.default})", **kind
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
    show.add_argument("--split", default="test", help="split to read (default: test)")
    cli_args.add_limit(show, default=3, help="records to load and print")
    cli_args.add_skip_bad(show)
    show.set_defaults(func=_show)

    diff = sub.add_parser(
        "difficulty",
        help="sample a base model N times per question; mark the all-fail ones for latent supervision",
        description="Write a JSON naming the questions the model never answers correctly in N samples "
        "(GAP's difficulty-aware supervision); `vedas train --data.difficulty FILE` reads it.",
    )
    cli_args.add_checkpoint(diff, help="the base model: a vedas checkpoint, or a base HF model dir / hub id")
    cli_args.add_data(diff, split="train", data_help="the training data, e.g. synthetic:data/synth")
    diff.add_argument("--samples", type=int, default=8, help="samples per question (default: 8)")
    diff.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (default: 1.0)")
    diff.add_argument("--seed", type=int, default=0, help="sampling seed; same seed, same split (default: 0)")
    cli_args.add_method(diff, default="cot")
    diff.add_argument("--batch-size", type=int, default=8, help="rows per generate call (default: 8)")
    diff.add_argument("--scoring", default="vedas", help="scoring rule (default: vedas)")
    diff.add_argument("--max-new-tokens", type=int, default=None, help="cap on generated tokens")
    cli_args.add_device(diff)
    diff.add_argument("--out", required=True, help="where to write the JSON")
    diff.add_argument("--no-progress", action="store_true", help="do not show a progress bar")
    diff.set_defaults(func=_difficulty)


def _synth(args: argparse.Namespace) -> int:
    from vedas.data.synth import PRESETS, SynthConfig, write

    knobs = {f.name: getattr(args, f.name) for f in fields(SynthConfig) if hasattr(args, f.name)}
    try:
        cfg = SynthConfig(**{**PRESETS.get(args.preset or "", {}), **knobs})
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


def _difficulty(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    import vedas
    from vedas.data import DataError, load
    from vedas.data.registry import split_spec
    from vedas.evaluation.difficulty import sample_difficulty

    name, path = split_spec(args.data)
    try:
        records = load(name, path=path, split=args.split, limit=args.limit)
    except (ValueError, FileNotFoundError, DataError) as exc:
        print(f"vedas data difficulty: {exc}", file=sys.stderr)
        return 2
    print(records.describe())
    vm = vedas.load(args.checkpoint, device=cli_args.resolve_device(args.device))
    try:
        result = sample_difficulty(
            vm,
            list(records),
            samples=args.samples,
            temperature=args.temperature,
            seed=args.seed,
            mode=args.method,
            batch_size=args.batch_size,
            scoring=args.scoring,
            max_new_tokens=args.max_new_tokens,
            progress=not args.no_progress,
        )
    except ValueError as exc:
        print(f"vedas data difficulty: {exc}", file=sys.stderr)
        return 2
    result = {"checkpoint": str(args.checkpoint), "data": args.data, "split": args.split, **result}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(
        f"{result['hard']} of {result['n']} questions never answered correctly in {args.samples} samples "
        f"(latent supervision); wrote {out}"
    )
    return 0
