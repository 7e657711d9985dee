"""``vedas serve``: an OpenAI-compatible chat-completions server over the batched latent engine.

    vedas serve --checkpoint runs/demo/vedas/final [--host 127.0.0.1 --port 8000]
                [--max-batch-size 16 --batch-timeout-ms 10] [--method vedas]

Then any OpenAI client talks to it:

    client = openai.OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="unused")
    client.chat.completions.create(model="final", messages=[...], max_tokens=64,
                                   extra_body={"mode": "vedas", "latents": 4})

Concurrent requests are gathered into batches of ``VedasModel.generate`` (up to
``--max-batch-size``, or once the oldest has waited ``--batch-timeout-ms``). ``--port 0``
asks the OS for a free port; the line ``vedas serve: listening on http://HOST:PORT`` says
which, once the port accepts connections. Needs the ``serve`` extra (FastAPI, uvicorn).
How-to and the request format: docs/serve.md.
"""

from __future__ import annotations

import argparse
import socket
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from vedas import cli_args

if TYPE_CHECKING:
    from vedas.model import VedasModel
    from vedas.serve.app import Settings

HELP = "an OpenAI-compatible server (POST /v1/chat/completions) with dynamic batching"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    cli_args.add_checkpoint(parser)
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    parser.add_argument(
        "--port", type=int, default=8000, help="port to bind; 0 = any free one (default: 8000)"
    )
    parser.add_argument(
        "--max-batch-size", type=int, default=16, help="most requests per engine call (default: 16)"
    )
    parser.add_argument(
        "--batch-timeout-ms",
        type=float,
        default=10.0,
        help="how long the oldest queued request waits for others to join its batch (default: 10)",
    )
    cli_args.add_method(parser, default="vedas", help="the mode of a request that names none")
    parser.add_argument(
        "--served-model-name", default=None, help="the model id clients send (default: the checkpoint's name)"
    )
    parser.add_argument("--max-images", type=int, default=4, help="most images in one request (default: 4)")
    parser.add_argument(
        "--max-tokens-limit",
        type=int,
        default=2048,
        help="largest max_tokens a request may ask (default: 2048)",
    )
    parser.add_argument(
        "--max-body-mb", type=float, default=32.0, help="largest request body in MiB (default: 32)"
    )
    cli_args.add_device(parser)
    parser.add_argument(
        "--log-level",
        default="warning",
        choices=["debug", "info", "warning", "error"],
        help="uvicorn's log level; info logs every request (default: warning)",
    )
    parser.set_defaults(func=run)


def _check(args: argparse.Namespace) -> str | None:
    """The first bad flag, as a message, before the model is loaded."""
    for flag, value, low in (
        ("--max-batch-size", args.max_batch_size, 1),
        ("--max-images", args.max_images, 0),
        ("--max-tokens-limit", args.max_tokens_limit, 1),
        ("--port", args.port, 0),
    ):
        if value < low:
            return f"{flag}: must be ≥ {low}, got {value}"
    if args.batch_timeout_ms < 0 or args.max_body_mb <= 0:
        return "--batch-timeout-ms must be ≥ 0 and --max-body-mb > 0"
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as e:
        return f"needs the serve extra: pip install -c constraints.txt -e '.[serve]' ({e})"
    return None


def settings_from_args(args: argparse.Namespace, vm: VedasModel) -> Settings:
    from vedas.serve.app import Settings
    from vedas.serve.protocol import Limits

    backbone = vm.backbone
    limits = Limits(
        max_images=args.max_images,
        max_tokens=args.max_tokens_limit,
        min_image_side=backbone.patch_size * backbone.merge_size,
        default_max_tokens=min(vm.config.max_new_tokens, args.max_tokens_limit),
    )
    return Settings(
        served=args.served_model_name or Path(args.checkpoint).name,
        default_mode=args.method,
        max_batch_size=args.max_batch_size,
        batch_timeout_s=args.batch_timeout_ms / 1e3,
        max_body_bytes=int(args.max_body_mb * 2**20),
        limits=limits,
    )


def run(args: argparse.Namespace) -> int:
    problem = _check(args)
    if problem:
        print(f"vedas serve: {problem}", file=sys.stderr)
        return 2
    import uvicorn

    import vedas
    from vedas.serve.app import create_app

    vm = vedas.load(args.checkpoint, device=cli_args.resolve_device(args.device))
    settings = settings_from_args(args, vm)
    app = create_app(vm, settings)
    # bind and listen before saying where: with --port 0 only the socket knows the port
    family = socket.AF_INET6 if ":" in args.host else socket.AF_INET
    # proto IPPROTO_TCP, so asyncio sets TCP_NODELAY on every accepted connection: else Nagle's
    # algorithm holds a reply's body until the client's delayed ACK (~40 ms a request)
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((args.host, args.port))
    sock.listen(2048)
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    print(f"vedas serve: listening on http://{shown}:{port} (model {settings.served!r})", flush=True)
    server = uvicorn.Server(uvicorn.Config(app, log_level=args.log_level, timeout_graceful_shutdown=30))
    server.run(sockets=[sock])
    return 0
