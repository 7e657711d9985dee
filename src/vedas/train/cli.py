"""``vedas train``: curriculum latent training of one method, from a YAML config and overrides.

    vedas train --config configs/synthetic_tiny.yaml [--optim.lr 1e-4 --run.output_dir runs/x ...]
    torchrun --nproc_per_node 2 -m vedas.cli train --config ...          # data parallel (gloo on CPU)

Methods: ``no_cot`` (answer-only SFT), ``cot`` (explicit CoT SFT), ``latent`` (curriculum +
visual replay; the IVT-LR-style baseline) and ``vedas`` (adds SCF-VR self-distillation and,
when a ``routing`` section is given, routing depth scaling). The recipe itself is
:mod:`vedas.train.recipe`; this module is its command line only, so that ``--help`` imports no torch.
"""

from __future__ import annotations

import argparse
import os
import sys

HELP = "curriculum latent training (no_cot | cot | latent | vedas) on one machine or many"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", default=None, help="YAML config (see configs/); fields not given keep defaults"
    )
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    parser.epilog = (
        "Any config field can follow as --section.field VALUE, e.g. --optim.lr 1e-4 --run.output_dir runs/x "
        "--latent.latents 2 --lora.enabled true. Unknown fields and bad values fail before any work starts."
    )
    parser.set_defaults(func=run, overrides=[])


def run(args: argparse.Namespace) -> int:
    """``vedas train``; a bad config, data or path is a UserError, which the CLI's boundary prints."""
    from vedas.config import ConfigError, to_dict
    from vedas.train.config import load_config
    from vedas.train.interrupt import Interrupted
    from vedas.train.recipe import NonFiniteLossError, main, resume_command

    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as e:
        raise ConfigError(f"bad config: {e}") from None
    if args.print_config:
        print(__import__("yaml").safe_dump(to_dict(cfg), sort_keys=False))
        return 0
    try:
        main(cfg)
    except NonFiniteLossError as e:
        print(f"vedas train: {e}", file=sys.stderr)
        return 1
    except Interrupted as e:
        if int(os.environ.get("RANK", "0")) == 0:
            saved = (
                f"saved {e.checkpoint}"
                if e.checkpoint
                else "no checkpoint was saved (DeepSpeed runs do not resume)"
            )
            print(f"vedas train: {e}; {saved}. Resume with:\n  {resume_command(args)}", file=sys.stderr)
        return e.exit_code
    return 0
