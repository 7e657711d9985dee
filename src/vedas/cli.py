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

:func:`main` is the one error boundary: an expected user error (a
:class:`~vedas.errors.UserError`: bad config, data, path, checkpoint or input; a missing file)
prints one line, ``vedas <command>: <message>``, and exits 2; Ctrl-C outside training exits 130.
``--debug`` (anywhere on the line) or ``VEDAS_DEBUG=1`` shows the traceback instead. Any other
exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

EXPECTED: tuple[type[BaseException], ...] = (FileNotFoundError, NotADirectoryError, IsADirectoryError)
"""Besides :class:`~vedas.errors.UserError`: the path errors a user causes (a missing file or folder)."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vedas",
        description="Multimodal latent reasoning with Visual Enhanced Depth Scaling on Hugging Face VLMs.",
    )
    parser.add_argument(
        "--debug",
        action="store_true",
        help="show the full traceback of an error (also VEDAS_DEBUG=1); may stand anywhere on the line",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    from vedas.analysis import cli as analysis_cli
    from vedas.analysis import infer
    from vedas.data import cli as data_cli
    from vedas.evaluation import evaluate
    from vedas.experiments import bench, demo
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


def one_line(error: BaseException) -> str:
    """An error's message on one line (messages that quote a file or a YAML excerpt may span several)."""
    text = " ".join(part.strip() for part in str(error).splitlines() if part.strip())
    return text or type(error).__name__


def main(argv: Sequence[str] | None = None) -> int:
    from vedas.errors import UserError

    argv = list(sys.argv[1:] if argv is None else argv)
    # --debug may follow the subcommand too (`vedas train ... --debug`), where train would read it as
    # a --section.field override, so it is taken out before parsing
    debug = "--debug" in argv or os.environ.get("VEDAS_DEBUG", "") not in ("", "0")
    argv = [a for a in argv if a != "--debug"]
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        # subcommands taking ``--section.field value`` overrides declare set_defaults(overrides=[])
        if not hasattr(args, "overrides"):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = extra
    args.argv = argv  # the command line as given, for commands that print how to continue
    try:
        return int(args.func(args) or 0)
    except (UserError, *EXPECTED) as e:
        if debug:
            raise
        print(f"vedas {args.command}: {one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"vedas {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
