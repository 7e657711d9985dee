"""The ``vedas`` command line: one entry point, one subcommand per job.

    vedas demo            the main job on the embedded default (no download)
    vedas data synth ...  write the synthetic benchmark
    vedas infer ...       answer one question about one image
    vedas bench ...       measured speed ratios, side by side

Each subcommand has its own ``--help``. Subcommands whose issue has not landed yet say so
and exit with status 2 rather than print anything that looks like a result.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vedas",
        description="Multimodal latent reasoning with Visual Enhanced Depth Scaling on Hugging Face VLMs.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    from vedas.analysis import cli as analysis_cli
    from vedas.data import cli as data_cli
    from vedas.dev import bench, demo
    from vedas.evaluation import evaluate, infer
    from vedas.train import recipe as train

    raw = argparse.RawDescriptionHelpFormatter  # for docstrings with example blocks
    for name, module, formatter in (
        ("demo", demo, None),
        ("data", data_cli, None),
        ("bench", bench, raw),
        ("eval", evaluate, raw),
        ("train", train, raw),
        ("infer", infer, None),
        ("analyze", analysis_cli, None),
    ):
        extra = {"formatter_class": formatter} if formatter else {}
        module.add_arguments(sub.add_parser(name, help=module.HELP, description=module.__doc__, **extra))

    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        # subcommands taking ``--section.field value`` overrides declare set_defaults(overrides=[])
        if not hasattr(args, "overrides"):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = extra
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
