"""``vedas analyze``: one subcommand per diagnostic, each writing PNGs and the numbers as JSON.

    vedas analyze norms --checkpoint CKPT --out runs/analysis/norms
    vedas analyze crops --checkpoint CKPT --data synthetic:data/synth --out runs/analysis/crops

Each diagnostic has its own ``--help``. Adding one: a module of this package with ``HELP``
(one line), ``add_arguments(parser)`` (which sets ``func``) and a docstring (its ``--help``),
named in :data:`ANALYSES`.
"""

from __future__ import annotations

import argparse
import importlib

HELP = "diagnostics as PNG + JSON: norms, gradients, crops, latents, latent-use, replay"

ANALYSES: dict[str, str] = {
    "norms": "vedas.analysis.norms",
    "gradients": "vedas.analysis.gradients",
    "crops": "vedas.analysis.crops",
    "latents": "vedas.analysis.latents",
    "latent-use": "vedas.analysis.latent_use",
    "replay": "vedas.analysis.replay",
}
"""Subcommand -> the module that implements it."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from vedas.cli_args import plain

    sub = parser.add_subparsers(dest="analysis", metavar="ANALYSIS", required=True)
    for name, module in ANALYSES.items():
        mod = importlib.import_module(module)
        mod.add_arguments(
            sub.add_parser(
                name,
                help=mod.HELP,
                description=plain(mod.__doc__),
                formatter_class=argparse.RawDescriptionHelpFormatter,
            )
        )
