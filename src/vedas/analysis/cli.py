"""``vedas analyze``: one subcommand per diagnostic, each writing PNGs and the numbers as JSON.

Each analysis is a module of this package exposing ``HELP`` (one line), ``add_arguments(parser)``
and ``run(args) -> int``; the table below names them. A module that is not there yet is
listed with the issue that brings it, and exits with status 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys

HELP = "diagnostics as PNG + JSON: norms, gradients, crops, latents, latent-use"

# subcommand -> (module, issue that brings it)
ANALYSES: dict[str, tuple[str, str]] = {
    "norms": ("vedas.analysis.norms", "issue 7"),
    "gradients": ("vedas.analysis.gradients", "issue 8"),
    "crops": ("vedas.analysis.crops", "issue 8"),
    "latents": ("vedas.analysis.latents", "issue 8"),
    "latent-use": ("vedas.analysis.latent_use", "issue 8"),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="analysis", metavar="ANALYSIS", required=True)
    for name, (module, issue) in ANALYSES.items():
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as e:
            if e.name != module:
                raise
            p = sub.add_parser(name, help=f"(not built yet: {issue})")
            p.set_defaults(func=_pending(name, issue))
            continue
        mod.add_arguments(
            sub.add_parser(
                name,
                help=mod.HELP,
                description=mod.__doc__,
                formatter_class=argparse.RawDescriptionHelpFormatter,
            )
        )


def _pending(name: str, issue: str):
    def run(_: argparse.Namespace) -> int:
        print(f"vedas analyze {name}: not built yet ({issue} brings it).", file=sys.stderr)
        return 2

    return run
