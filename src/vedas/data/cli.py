"""Data commands (placeholder until the data issue lands)."""

from __future__ import annotations

import argparse
import sys

HELP = "data tools: the synthetic benchmark (issue 3)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.set_defaults(func=_run)


def _run(_: argparse.Namespace) -> int:
    print("vedas data: not built yet (issue 3 brings it).", file=sys.stderr)
    return 2
