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
from collections.abc import Callable, Sequence

# Subcommands that are planned but not built yet, and the issue that brings each.
PENDING: dict[str, tuple[str, str]] = {}


def _pending(name: str) -> Callable[[argparse.Namespace], int]:
    what, issue = PENDING[name]

    def run(_: argparse.Namespace) -> int:
        print(f"vedas {name}: {what} is not built yet ({issue} brings it).", file=sys.stderr)
        return 2

    return run


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vedas",
        description="Multimodal latent reasoning with Visual Enhanced Depth Scaling on Hugging Face VLMs.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    from vedas import demo

    demo.add_arguments(sub.add_parser("demo", help=demo.HELP, description=demo.__doc__))

    from vedas.data import cli as data_cli

    data_cli.add_arguments(sub.add_parser("data", help=data_cli.HELP, description=data_cli.__doc__))

    from vedas import bench, evaluate, infer, train

    bench.add_arguments(
        sub.add_parser(
            "bench",
            help=bench.HELP,
            description=bench.__doc__,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
    )

    evaluate.add_arguments(
        sub.add_parser(
            "eval",
            help=evaluate.HELP,
            description=evaluate.__doc__,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
    )

    train.add_arguments(
        sub.add_parser(
            "train",
            help=train.HELP,
            description=train.__doc__,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
    )

    infer.add_arguments(sub.add_parser("infer", help=infer.HELP, description=infer.__doc__))

    from vedas.analysis import cli as analysis_cli

    analysis_cli.add_arguments(
        sub.add_parser("analyze", help=analysis_cli.HELP, description=analysis_cli.__doc__)
    )

    for name, (what, issue) in PENDING.items():
        p = sub.add_parser(name, help=f"{what} (not built yet: {issue})", description=f"{what}; {issue}.")
        p.set_defaults(func=_pending(name))
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
