"""``vedas serve``: an OpenAI-compatible chat-completions server over the batched latent engine.

    vedas serve --checkpoint runs/demo/vedas/final [--host 127.0.0.1 --port 8000]
                [--max-batch-size 16 --batch-timeout-ms 10] [--method vedas]
                [--allowed-local-media-path DIR] [--api-key KEY] [--max-queued 256]
                [--replicas N [--ray-address auto|HOST:PORT]]

Then any OpenAI client talks to it:

    client = openai.OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="unused")
    client.chat.completions.create(model="final", messages=[...], max_tokens=64,
                                   extra_body={"mode": "vedas", "latents": 4})

Concurrent requests are gathered into batches of ``VedasModel.generate`` (up to
``--max-batch-size``, or once the oldest has waited ``--batch-timeout-ms``). ``--port 0``
asks the OS for a free port; the line ``vedas serve: listening on http://HOST:PORT`` says
which, once the port accepts connections. Needs the ``serve`` extra (FastAPI, uvicorn).
How-to, the request format and the security model (what a client can make the server read,
and which flags widen it): docs/serve.md. SIGTERM or SIGINT: new requests get 503, the
running batch finishes, queued requests get 503, and the process exits 0. ``--replicas N``
runs the same app N times on Ray Serve (:mod:`vedas.serve.replicas`, docs/scale.md#serving);
without it Ray is never imported.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

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
    parser.add_argument(
        "--allowed-local-media-path",
        default=None,
        help="let requests name image files (file:// URLs, absolute paths) under this directory only; "
        "without it no local file is ever read (default: none)",
    )
    parser.add_argument(
        "--max-image-pixels",
        type=int,
        default=None,
        help="largest image (width × height, from its header) a request may send (default: 16 × the "
        "processor's pixel budget)",
    )
    parser.add_argument(
        "--max-queued", type=int, default=256, help="most requests waiting; more get 429 (default: 256)"
    )
    parser.add_argument(
        "--request-timeout-s",
        type=float,
        default=600.0,
        help="a request not answered within this many seconds gets 504 (default: 600)",
    )
    parser.add_argument(
        "--api-key",
        default=os.environ.get("VEDAS_API_KEY"),
        help="require 'Authorization: Bearer KEY' on /v1 routes (default: $VEDAS_API_KEY; none: no check)",
    )
    parser.add_argument(
        "--shutdown-grace-s",
        type=float,
        default=30.0,
        help="on SIGTERM, how long the running batch may take to finish (default: 30)",
    )
    parser.add_argument(
        "--replicas",
        type=int,
        default=None,
        help="run N copies behind one endpoint on Ray Serve, one per device (needs the ray extra; "
        "docs/scale.md#serving); default: one process, no Ray",
    )
    parser.add_argument(
        "--ray-address",
        default=None,
        help="with --replicas: join this Ray cluster ('auto' or HOST:PORT) instead of starting a local one",
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
        ("--max-queued", args.max_queued, 1),
        ("--max-image-pixels", args.max_image_pixels or 1, 1),
    ):
        if value < low:
            return f"{flag}: must be ≥ {low}, got {value}"
    if args.batch_timeout_ms < 0 or args.max_body_mb <= 0:
        return "--batch-timeout-ms must be ≥ 0 and --max-body-mb > 0"
    if args.request_timeout_s <= 0 or args.shutdown_grace_s < 0:
        return "--request-timeout-s must be > 0 and --shutdown-grace-s ≥ 0"
    if args.replicas is not None and args.replicas < 1:
        return f"--replicas: must be ≥ 1, got {args.replicas}"
    if args.ray_address is not None and args.replicas is None:
        return "--ray-address: only with --replicas"
    media = args.allowed_local_media_path
    if media is not None and not os.path.isdir(media):
        return f"--allowed-local-media-path: {media!r} is not a directory"
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as e:
        return f"needs the serve extra: pip install -c constraints.txt -e '.[serve]' ({e})"
    if args.replicas is not None:
        try:
            import ray.serve  # noqa: F401
        except ImportError as e:
            return f"--replicas needs the ray extra: pip install -c constraints.txt -e '.[ray]' ({e})"
    return None


def settings_from_args(args: argparse.Namespace, vm: VedasModel) -> Settings:
    from vedas.model import MAX_ASPECT
    from vedas.serve.app import Settings
    from vedas.serve.media import MediaPolicy
    from vedas.serve.protocol import Limits

    backbone = vm.backbone
    keep = keep_pixels(vm)
    media = MediaPolicy(
        allowed_dir=None
        if args.allowed_local_media_path is None
        else Path(os.path.realpath(args.allowed_local_media_path)),
        max_pixels=args.max_image_pixels or 16 * keep,
        keep_pixels=keep,
        max_file_bytes=int(args.max_body_mb * 2**20),
        min_side=backbone.patch_size * backbone.merge_size,
        max_aspect=MAX_ASPECT,
    )
    limits = Limits(
        max_images=args.max_images,
        max_tokens=args.max_tokens_limit,
        default_max_tokens=min(vm.config.max_new_tokens, args.max_tokens_limit),
        media=media,
    )
    return Settings(
        served=args.served_model_name or Path(args.checkpoint).name,
        default_mode=args.method,
        max_batch_size=args.max_batch_size,
        batch_timeout_s=args.batch_timeout_ms / 1e3,
        max_body_bytes=int(args.max_body_mb * 2**20),
        limits=limits,
        max_queued=args.max_queued,
        request_timeout_s=args.request_timeout_s,
        api_key=args.api_key or None,
    )


def keep_pixels(vm: VedasModel) -> int:
    """The most pixels the processor keeps of one image: ``config.max_pixels``, else its own budget."""
    if vm.config.max_pixels:
        return int(vm.config.max_pixels)
    size = vm.processor.image_processor.size
    if size.get("longest_edge"):  # Qwen-VL: a pixel budget
        return int(size["longest_edge"])
    if size.get("height") and size.get("width"):  # a fixed resize
        return int(size["height"]) * int(size["width"])
    return 1024 * 1024


def _server(app: Any, args: argparse.Namespace) -> Any:
    """uvicorn's server, told to stop the batcher the moment a signal asks it to exit.

    uvicorn alone would wait for every open request (queued ones included) up to its grace
    period and then cancel them with a bare 500: instead the batcher fails the queued ones at
    once (503 error objects) and only the running batch is waited for.
    """
    import uvicorn

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            app.state.batcher.begin_stop()
            super().handle_exit(sig, frame)

    config = uvicorn.Config(app, log_level=args.log_level, timeout_graceful_shutdown=args.shutdown_grace_s)
    return Server(config)


def run(args: argparse.Namespace) -> int:
    problem = _check(args)
    if problem:
        print(f"vedas serve: {problem}", file=sys.stderr)
        return 2
    if args.replicas is not None:
        from vedas.serve.replicas import serve_replicas

        return serve_replicas(args, settings_from_args)
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
    # uvicorn re-raises the signal that stopped it once its shutdown is done; with the default
    # handler that would kill the process (exit -15) after a clean shutdown: these make it a no-op
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)
    _server(app, args).run(sockets=[sock])
    return 0
