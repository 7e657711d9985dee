"""The ``vedas`` command line: one entry point, one subcommand per job.

    vedas demo               the main job on the embedded default (no download)
    vedas data synth ...     write the synthetic benchmark (also: data show, data difficulty)
    vedas train --config ... train one method (the recipe; ``--section.field value`` overrides)
    vedas eval ...           accuracy, AR steps and latency of a checkpoint (report.json + .md)
    vedas infer ...          answer one question about one image
    vedas bench ...          measured speed ratios, side by side
    vedas analyze ...        diagnostics as PNG + JSON (norms, gradients, crops, latents, latent-use)
    vedas serve ...          an OpenAI-compatible server with dynamic batching

Each subcommand has its own ``--help``. The flags they share (``--checkpoint``, ``--data``,
``--split``, ``--method``, ``--device``) are declared once, in :mod:`vedas.cli_args`.
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
    from vedas.serve import cli as serve_cli
    from vedas.train import recipe as train

    for name, module in (
        ("demo", demo),
        ("data", data_cli),
        ("bench", bench),
        ("eval", evaluate),
        ("train", train),
        ("infer", infer),
        ("analyze", analysis_cli),
        ("serve", serve_cli),
    ):
        # the module docstring is the description; its example blocks keep their line breaks
        module.add_arguments(
            sub.add_parser(
                name,
                help=module.HELP,
                description=module.__doc__,
                formatter_class=argparse.RawDescriptionHelpFormatter,
            )
        )

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
