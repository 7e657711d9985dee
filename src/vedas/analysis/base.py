"""What every ``vedas analyze`` command shares: its inputs, its outputs and its figure canvas.

- Inputs: a checkpoint and a dataset split (``--checkpoint DIR --data NAME[:PATH] --split S --n N``,
  the shared flags of :mod:`vedas.cli_args`), checked before any compute; a bad value raises
  :class:`AnalysisError` naming the flag, which the command prints and answers with exit status 2.
- Outputs: figures are drawn on a ``matplotlib.figure.Figure`` with an explicit Agg canvas
  (no pyplot, no global backend switch, nothing left open) and saved as PNG; the numbers
  behind each figure go to a JSON file beside it.

The analyses themselves live one per module (:mod:`vedas.analysis.gradients`,
:mod:`~vedas.analysis.crops`, :mod:`~vedas.analysis.latents`,
:mod:`~vedas.analysis.latent_use`); this module holds no analysis.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from vedas import cli_args

# one palette for every analysis figure, so the same kind of token has the same colour everywhere
COLORS = {
    "visual": "#C44E52",
    "text": "#4C72B0",
    "latent": "#55A868",
    "replay": "#DD8452",
    "target": "#8172B3",
}


class AnalysisError(ValueError):
    """A bad argument to an analysis command; the message starts with the flag it is about."""


def require(ok: bool, flag: str, message: str) -> None:
    if not ok:
        raise AnalysisError(f"{flag}: {message}")


# --- inputs --------------------------------------------------------------------------------


def add_model_arguments(
    parser: argparse.ArgumentParser,
    n_default: int,
    n_help: str,
    *,
    batch_size: int = 8,
    data_default: str | None = None,
    latent_method: bool = True,
) -> None:
    """``--checkpoint --data --split --n --batch-size --device --out`` (and ``--method``) for the analyses.

    ``data_default``: what happens without ``--data`` (it is required when None);
    ``latent_method``: add ``--method`` with the latent methods as its choices.
    """
    cli_args.add_checkpoint(parser)
    data_help = None if data_default is None else f"dataset and its folder (default: {data_default})"
    cli_args.add_data(parser, required=data_default is None, data_help=data_help, limit=False)
    parser.add_argument("--n", type=int, default=n_default, help=f"{n_help} (default: {n_default})")
    parser.add_argument(
        "--batch-size", type=int, default=batch_size, help=f"samples per batch (default: {batch_size})"
    )
    if latent_method:
        cli_args.add_method(parser, default="vedas", latent_only=True, help="latent decoding method")
    cli_args.add_device(parser)
    parser.add_argument("--out", required=True, help="output directory for the PNG and JSON files")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")


def check_model_arguments(args: argparse.Namespace) -> Path:
    """``--n``, ``--batch-size`` and ``--checkpoint`` checked before any compute; the checkpoint path."""
    require(args.n >= 1, "--n", f"must be ≥ 1, got {args.n}")
    require(args.batch_size >= 1, "--batch-size", f"must be ≥ 1, got {args.batch_size}")
    ckpt = Path(args.checkpoint)
    require(ckpt.exists(), "--checkpoint", f"{ckpt} does not exist")
    return ckpt


def load_records(args: argparse.Namespace) -> list[Any]:
    """The first ``--n`` records of ``--data``/``--split``; errors name the flag."""
    from vedas.data import load
    from vedas.data.registry import canonical_name, split_spec

    name, path = split_spec(args.data)
    try:
        canonical_name(name)
    except ValueError as e:
        raise AnalysisError(f"--data: {e}") from None
    try:
        records = load(name, path=path, split=args.split, limit=args.n)
    except (OSError, ValueError) as e:
        raise AnalysisError(f"--data/--split: cannot read {args.data!r} split {args.split!r}: {e}") from None
    require(len(records) > 0, "--data", f"{args.data!r} split {args.split!r} has no records")
    return list(records)


def load_model(args: argparse.Namespace) -> Any:
    """The ``--checkpoint`` on the ``--device``."""
    import vedas

    return vedas.load(Path(args.checkpoint), device=cli_args.resolve_device(args.device))


def load_model_and_records(args: argparse.Namespace) -> tuple[Any, list[Any]]:
    """The checkpoint and the first ``--n`` records of ``--data``/``--split``; errors name the flag."""
    check_model_arguments(args)
    records = load_records(args)
    return load_model(args), records


def batches(items: Sequence[Any], size: int) -> list[Sequence[Any]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def run_command(name: str, body: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Wrap a command body so an :class:`AnalysisError` prints ``vedas analyze NAME: …`` and exits 2."""

    def run(args: argparse.Namespace) -> int:
        try:
            return body(args)
        except AnalysisError as e:
            print(f"vedas analyze {name}: {e}", file=sys.stderr)
            return 2

    return run


# --- outputs -------------------------------------------------------------------------------


def figure(rows: int, cols: int, size: tuple[float, float], **kwargs: Any) -> tuple[Any, Any]:
    """A Figure on an Agg canvas and its (rows, cols) array of axes (always 2-D)."""
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, squeeze=False, **kwargs)
    return fig, np.asarray(axes)


def save_figure(fig: Any, path: str | Path, dpi: int = 100) -> Path:
    """Write ``fig`` as PNG (creating the folder) and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, format="png")
    return path


def _clean(value: Any) -> Any:
    """JSON has no NaN/inf: write them as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def write_json(path: str | Path, data: dict[str, Any]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_clean(data), indent=1))
    return path


def progress(total: int, desc: str, enabled: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, disable=not enabled, leave=False)
