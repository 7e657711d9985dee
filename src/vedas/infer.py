"""``vedas infer``: answer one question about one image with a checkpoint.

    vedas infer --checkpoint runs/demo/vedas --image cat.png --question "How many cats?" --choices 1 2 3

Prints the answer, the mode, the latent count used and the autoregressive steps.
"""

from __future__ import annotations

import argparse

HELP = "answer one question about one image with a checkpoint"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--checkpoint", required=True, help="vedas checkpoint directory, or a base HF model dir / hub id"
    )
    parser.add_argument("--image", default=None, help="image file (omit for a text-only question)")
    parser.add_argument("--question", required=True, help="the question text")
    parser.add_argument(
        "--choices", nargs="*", default=None, help="answer options, lettered (A), (B), … in the prompt"
    )
    parser.add_argument(
        "--mode", default="vedas", choices=["vedas", "latent", "cot", "no_cot"], help="how to answer"
    )
    parser.add_argument(
        "--latents", type=int, default=None, help="override the checkpoint's latent count T_r"
    )
    parser.add_argument("--max-new-tokens", type=int, default=None, help="cap on generated tokens")
    parser.add_argument("--device", default=None, help="torch device (default: cpu)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import vedas

    vm = vedas.load(args.checkpoint, device=args.device)
    d = vm.generate(
        [args.image],
        [args.question],
        [args.choices] if args.choices else None,
        mode=args.mode,
        latents=args.latents,
        return_details=True,
        max_new_tokens=args.max_new_tokens,
    )
    print(d.texts[0])
    print(f"[mode={args.mode} latents={d.latents.shape[1]} ar_steps={d.ar_steps[0]}]")
    return 0
