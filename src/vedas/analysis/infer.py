"""``vedas infer``: answer one question about one image with a checkpoint.

    vedas infer --checkpoint runs/demo/vedas --image cat.png --question "How many cats?" --choices 1 2 3

Prints the answer, the method, the latent count used and the autoregressive steps. With
``--show-replay out.png`` (methods ``vedas``/``latent``) it also draws what each latent step
replayed: one panel per step with the replayed tokens on the image's merged grid and the
SCF-VR crop window (the figure of ``vedas analyze crops``, drawn by the same function).
"""

from __future__ import annotations

import argparse

from vedas import cli_args

HELP = "answer one question about one image with a checkpoint"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    cli_args.add_checkpoint(parser)
    parser.add_argument("--image", default=None, help="image file (omit for a text-only question)")
    parser.add_argument("--question", required=True, help="the question text")
    parser.add_argument(
        "--choices", nargs="*", default=None, help="answer options, lettered (A), (B), … in the prompt"
    )
    cli_args.add_method(parser, default="vedas")
    parser.add_argument(
        "--latents", type=int, default=None, help="override the checkpoint's latent count T_r"
    )
    parser.add_argument("--max-new-tokens", type=int, default=None, help="cap on generated tokens")
    cli_args.add_engine(parser)
    cli_args.add_device(parser)
    cli_args.add_inputs(parser)
    parser.add_argument(
        "--show-replay",
        default=None,
        metavar="PNG",
        help="draw the replayed tokens and crop window of every latent step into this PNG",
    )
    parser.add_argument(
        "--replay-window",
        type=int,
        default=3,
        help="SCF-VR window W in merged cells for --show-replay (default: 3)",
    )
    cli_args.add_tto(parser)  # --tto stage1,stage2 --tto-steps N --tto-lr X
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import sys

    import vedas
    from vedas.methods import LATENT_METHODS

    if args.show_replay is not None:
        problem = None
        if args.method not in LATENT_METHODS:
            problem = (
                f"--show-replay: needs --method vedas or latent (method {args.method!r} has no latent steps)"
            )
        elif args.image is None:
            problem = "--show-replay: needs --image (nothing is replayed without one)"
        elif args.replay_window < 1:
            problem = f"--replay-window: must be ≥ 1, got {args.replay_window}"
        if problem:
            print(f"vedas infer: {problem}", file=sys.stderr)
            return 2
    from vedas.method.tto import from_args

    try:
        tto = from_args(args)
    except ValueError as e:
        print(f"vedas infer: {e}", file=sys.stderr)
        return 2
    from vedas.arguments import MAX_CHOICES, check_text
    from vedas.model import open_image

    # the flags' own names in the message (the library would say questions[0] / choices[0])
    check_text("--question", args.question)
    for text in args.choices or []:
        check_text("--choices", text)
    if args.choices and len(args.choices) > MAX_CHOICES:
        print(
            f"vedas infer: --choices: {len(args.choices)} options; at most {MAX_CHOICES} can be lettered (A–Z)",
            file=sys.stderr,
        )
        return 2
    image = None if args.image is None else open_image(args.image, "--image")  # before the model loads
    vm = vedas.load(
        args.checkpoint, device=cli_args.resolve_device(args.device), **cli_args.input_overrides(args)
    )
    from vedas.checkpoint import untrained_latents

    warning = untrained_latents(
        vm.trained, args.method, vm.config.latents if args.latents is None else args.latents
    )
    if warning:
        print(f"vedas infer: {warning}", file=sys.stderr)
    d = vm.generate(
        [image],
        [args.question],
        [args.choices] if args.choices else None,
        mode=args.method,
        latents=args.latents,
        return_details=True,
        max_new_tokens=args.max_new_tokens,
        engine=args.engine,
        tto=tto,
    )
    # an empty decode printed as an empty line looked like a crash or a display problem: say it
    print(
        d.texts[0] if d.texts[0].strip() else "(empty answer: the model generated no text before it stopped)"
    )
    print(f"[method={args.method} latents={d.latents.shape[1]} ar_steps={d.ar_steps[0]}]")
    if d.tto is not None:
        print(f"[tto {','.join(tto.stages)}: loss {d.tto['loss']}, +{d.timings_ms['tto']:.0f} ms]")
    if args.show_replay is not None:
        from vedas.analysis.crops import draw_replay, replay_views

        views = replay_views(
            vm,
            [image],
            [args.question],
            d,
            [args.choices] if args.choices else None,
            window=args.replay_window,
        )
        print(f"wrote {draw_replay(views, args.show_replay)}")
    return 0
