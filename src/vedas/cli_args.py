"""The flags that several ``vedas`` subcommands share, declared once so they read the same everywhere.

    from vedas import cli_args

    def add_arguments(parser):
        cli_args.add_checkpoint(parser)
        cli_args.add_data(parser, split="test", skip_bad=True)   # --data --split --limit --skip-bad
        cli_args.add_method(parser, default="vedas")             # --method, choices: vedas.methods.METHODS
        cli_args.add_device(parser)                              # --device auto|cpu|cuda|cuda:N
        cli_args.add_inputs(parser)                              # --min-pixels --max-pixels --truncate-context
        cli_args.add_arch(parser, help)                          # --arch (tiny models: demo, bench)

    def run(args):
        vm = vedas.load(args.checkpoint, device=cli_args.resolve_device(args.device),
                        **cli_args.input_overrides(args))

One device rule for every command: ``auto`` (the default) is ``cuda`` when a GPU is visible,
else ``cpu``; naming a CUDA device that is not there is an argument error before any work.
"""

from __future__ import annotations

import argparse
import re

from vedas.methods import LATENT_METHODS, METHODS

DEVICE_METAVAR = "auto|cpu|cuda|cuda:N"
_DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")


def add_arch(parser: argparse.ArgumentParser, help: str) -> None:
    """``--arch NAME``: a tiny random model's architecture (checked against the registry when it is built)."""
    parser.add_argument(
        "--arch",
        default="qwen2_vl",
        metavar="qwen2_vl|qwen2_5_vl|qwen3_vl|qwen3_vl_moe|chameleon",
        help=help,
    )


def add_checkpoint(parser: argparse.ArgumentParser, help: str | None = None) -> None:
    parser.add_argument(
        "--checkpoint",
        required=True,
        metavar="DIR",
        help=help or "vedas checkpoint directory, or a base HF model dir / hub id",
    )


def add_data(
    parser: argparse.ArgumentParser,
    *,
    split: str = "test",
    required: bool = True,
    data_help: str | None = None,
    limit: bool = True,
    skip_bad: bool = False,
) -> None:
    """``--data NAME[:PATH] --split S`` and, when asked, ``--limit N`` and ``--skip-bad``."""
    parser.add_argument(
        "--data",
        required=required,
        default=None,
        metavar="NAME[:PATH]",
        help=data_help
        or "dataset and its folder, e.g. synthetic:data/synth (names: `vedas data show --help`)",
    )
    parser.add_argument("--split", default=split, help=f"split to read (default: {split})")
    if limit:
        add_limit(parser)
    if skip_bad:
        add_skip_bad(parser)


def add_limit(
    parser: argparse.ArgumentParser, default: int | None = None, help: str = "read only the first N records"
) -> None:
    shown = "all" if default is None else default
    parser.add_argument("--limit", type=int, default=default, metavar="N", help=f"{help} (default: {shown})")


def add_skip_bad(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--skip-bad",
        action="store_true",
        help="skip and count unreadable rows (bad images, missing fields) instead of stopping at the first",
    )


def add_method(
    parser: argparse.ArgumentParser,
    default: str | list[str] = "vedas",
    *,
    latent_only: bool = False,
    several: bool = False,
    help: str = "how the model answers",
) -> None:
    """``--method`` with the method names of :mod:`vedas.methods` as its choices.

    ``latent_only``: only the methods with latent steps (for commands that inspect them);
    ``several``: one or more methods (``nargs="+"``), ``default`` then a list.
    """
    choices = LATENT_METHODS if latent_only else METHODS
    shown = " ".join(default) if isinstance(default, list) else default
    parser.add_argument(
        "--method",
        default=default,
        choices=choices,
        nargs="+" if several else None,
        help=f"{help} (default: {shown})",
    )


def add_inputs(parser: argparse.ArgumentParser) -> None:
    """``--min-pixels``, ``--max-pixels`` and ``--truncate-context``: how inputs are fitted to the model
    (the :class:`vedas.config.LatentConfig` fields of the same names; unset keeps the checkpoint's)."""
    parser.add_argument(
        "--min-pixels",
        type=int,
        default=None,
        metavar="N",
        help="resize smaller images up to about N pixels (default: the checkpoint's processor)",
    )
    parser.add_argument(
        "--max-pixels",
        type=int,
        default=None,
        metavar="N",
        help="resize larger images down to at most N pixels, e.g. 1003520 = 1280 visual tokens "
        "(default: the checkpoint's processor)",
    )
    parser.add_argument(
        "--truncate-context",
        action="store_true",
        help="cut a record's context field to fit the model's context limit instead of failing",
    )


def input_overrides(args: argparse.Namespace) -> dict[str, object]:
    """The ``vedas.load`` overrides that :func:`add_inputs`'s flags ask for (none when left unset)."""
    out: dict[str, object] = {}
    for name in ("min_pixels", "max_pixels"):
        if getattr(args, name, None) is not None:
            out[name] = getattr(args, name)
    if getattr(args, "truncate_context", False):
        out["truncate_context"] = True
    return out


TTO_STEPS, TTO_LR = 5, 0.05
""":class:`vedas.method.tto.TTOConfig`'s defaults, written out so ``--help`` needs no torch (a test checks)."""


def add_tto(parser: argparse.ArgumentParser) -> None:
    """``--tto STAGES``, ``--tto-steps N``, ``--tto-lr X`` (read by :func:`vedas.method.tto.from_args`)."""
    parser.add_argument(
        "--tto",
        default=None,
        metavar="STAGES",
        help="optimise the latents at inference (weights frozen): comma-separated stages, e.g. stage1,stage2",
    )
    parser.add_argument(
        "--tto-steps", type=int, default=TTO_STEPS, help=f"Adam steps per TTO stage (default: {TTO_STEPS})"
    )
    parser.add_argument(
        "--tto-lr", type=float, default=TTO_LR, help=f"TTO learning rate on the latents (default: {TTO_LR})"
    )


ENGINES = ["cached", "recompute", "static"]
"""The latent engines (:data:`vedas.engine.runners.ENGINES`; written out so ``--help`` needs no torch)."""


def add_engine(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--engine",
        default="cached",
        choices=ENGINES,
        help="latent engine: cached (KV cache), recompute (the oracle) or static (a preallocated cache "
        "and torch.compile of the decode and latent passes; CUDA graphs on a GPU) (default: cached)",
    )


def add_device(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--device",
        default="auto",
        type=_device_arg,
        metavar=DEVICE_METAVAR,
        help="torch device; auto = cuda if a GPU is visible, else cpu (default: auto)",
    )


def _device_arg(text: str) -> str:
    """Parse-time check of a ``--device`` value (argparse prefixes the flag to the message)."""
    import torch

    if not _DEVICE.fullmatch(text):
        raise argparse.ArgumentTypeError(f"{text!r}: choose {DEVICE_METAVAR}")
    if text.startswith("cuda"):
        index = int(text.partition(":")[2] or 0)
        if not torch.cuda.is_available() or index >= torch.cuda.device_count():
            raise argparse.ArgumentTypeError(
                f"{text!r}: no such CUDA device here ({torch.cuda.device_count()} visible); use cpu or auto"
            )
    return text


def resolve_device(arg: str | None) -> str:
    """The torch device a ``--device`` value means: ``auto`` (or None) is cuda if available, else cpu."""
    import torch

    if arg is None or arg == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        return _device_arg(arg)
    except argparse.ArgumentTypeError as e:
        raise ValueError(f"--device: {e}") from None


_ROLE = re.compile(r":[a-z]+:`~?([^`<]*?)(?:\s*<[^>]*>)?`")


def plain(doc: str | None) -> str | None:
    """A module docstring as help text: reStructuredText markup (``x``, :func:`~a.b`) as plain text."""
    if doc is None:
        return None
    doc = _ROLE.sub(lambda m: m.group(1).strip(), doc)  # :func:`~vedas.x.f` -> vedas.x.f
    return doc.replace("``", "`")
