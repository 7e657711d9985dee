"""The ``vedas`` command line: one entry point, one subcommand per job.

    vedas demo               the main job on the embedded default (no download)
    vedas data synth ...     write the synthetic benchmark (also: data show, data difficulty)
    vedas train --config ... train one method (the recipe; ``--section.field value`` overrides)
    vedas eval ...           accuracy, AR steps and latency of a checkpoint (report.json + .md)
    vedas infer ...          answer one question about one image
    vedas bench ...          measured speed ratios, side by side
    vedas analyze ...        diagnostics as PNG + JSON (norms, gradients, crops, latents, latent-use, replay)
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
import importlib
import os
import sys
from collections.abc import Sequence

from vedas.cli_args import plain

EXPECTED: tuple[type[BaseException], ...] = (FileNotFoundError, NotADirectoryError, IsADirectoryError)
"""Besides :class:`~vedas.errors.UserError`: the path errors a user causes (a missing file or folder)."""


COMMANDS: dict[str, tuple[str, str]] = {
    "demo": (
        "vedas.experiments.demo",
        "run the main job on the embedded default: synthetic data, tiny Qwen2-VL (or --arch), 4 methods, report",
    ),
    "data": (
        "vedas.data.cli",
        "data tools: write the synthetic benchmark, show any dataset as records, split by difficulty",
    ),
    "bench": (
        "vedas.experiments.bench",
        "speed/memory ratios side by side: cached vs recompute, vedas vs no_cot vs cot, batching, recording",
    ),
    "eval": (
        "vedas.evaluation.evaluate",
        "accuracy, AR steps and latency of a checkpoint on a dataset (report.json + report.md)",
    ),
    "train": (
        "vedas.train.cli",
        "curriculum latent training (no_cot | cot | latent | vedas) on one machine or many",
    ),
    "infer": ("vedas.analysis.infer", "answer one question about one image with a checkpoint"),
    "analyze": (
        "vedas.analysis.cli",
        "diagnostics as PNG + JSON: norms, gradients, crops, latents, latent-use, replay",
    ),
    "serve": (
        "vedas.serve.cli",
        "an OpenAI-compatible server (POST /v1/chat/completions) with dynamic batching",
    ),
}
"""Subcommand -> (module, one-line help). A module is imported only when its subcommand runs (or shows
its own --help), so ``vedas --help`` imports no torch; moving a module changes only its string here.
Each module defines ``add_arguments(parser)``, and ``HELP`` equal to the line here (a test checks)."""


def _invoked(argv: Sequence[str]) -> str | None:
    """The subcommand ``argv`` names: its first word that is not a flag (top-level flags take no value)."""
    return next((a for a in argv if not a.startswith("-")), None)


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The ``vedas`` parser. With ``argv``, only the subcommand it names is imported and given its
    arguments (the others show their one-line help only); without, every subcommand is complete."""
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
    wanted = set(COMMANDS) if argv is None else {_invoked(argv)}
    for name, (path, help) in COMMANDS.items():
        if name not in wanted:
            sub.add_parser(name, help=help)
            continue
        module = importlib.import_module(path)
        # the module docstring is the description; its example blocks keep their line breaks
        module.add_arguments(
            sub.add_parser(
                name,
                help=help,
                description=plain(module.__doc__),
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
    parser = build_parser(argv)
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
