"""``vedas serve --replicas N``: the same FastAPI app, N times, behind one Ray Serve endpoint.

    vedas serve --checkpoint CKPT --replicas 2 [--ray-address auto|HOST:PORT] [--host … --port …]

Each replica is a Ray Serve actor that loads the checkpoint itself and runs the app of
:func:`vedas.serve.app.create_app`, with its own dynamic batcher (no ``@serve.batch`` on top:
two batchers in a row would only add latency). Ray's proxy routes requests across replicas;
each answer names its replica in the ``x-vedas-replica`` header. One replica per device:
``num_gpus: 1`` on GPU, ``num_cpus: 1`` on CPU. Without ``--ray-address`` a local Ray cluster is
started on 127.0.0.1 (no dashboard) and shut down on exit; with it, the app joins that cluster
and only this app is deleted on exit. Needs the ``ray`` extra; nothing imports this module
unless ``--replicas`` is given. How-to and what was run: docs/scale.md#serving.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ray import serve

APP_NAME = "vedas"
REPLICA_HEADER = "x-vedas-replica"
SettingsFn = Callable[[argparse.Namespace, Any], Any]


class _ReplicaHeader:
    """Pure ASGI middleware naming the replica on every response (no BaseHTTPMiddleware: it would
    buffer the streamed answers and hide client disconnects from the app)."""

    def __init__(self, app: Any, replica: str) -> None:
        self.app, self.replica = app, replica.encode()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def tagged(message: Any) -> None:
            if message["type"] == "http.response.start":
                message = {
                    **message,
                    "headers": [*message.get("headers", []), (REPLICA_HEADER.encode(), self.replica)],
                }
            await send(message)

        await self.app(scope, receive, tagged)


@serve.deployment
@serve.ingress()
class VedasReplica:
    """One replica: the checkpoint loaded on this actor's device, served by ``create_app``."""

    def __init__(self, options: dict[str, Any], device: str, settings: SettingsFn) -> None:
        self.options, self.device, self.settings = options, device, settings

    def __serve_build_asgi_app__(self) -> Any:
        import vedas
        from vedas.serve.app import create_app

        args = argparse.Namespace(**self.options)
        # Ray gives a GPU replica its own device as CUDA_VISIBLE_DEVICES, so "cuda" is that one GPU
        vm = vedas.load(args.checkpoint, device=self.device)
        app = create_app(vm, self.settings(args, vm))
        app.add_middleware(_ReplicaHeader, replica=serve.get_replica_context().replica_id.unique_id)
        return app


def deployment_options(replicas: int, max_batch_size: int, max_queued: int, gpu: bool) -> dict[str, Any]:
    """Ray Serve's options for the deployment.

    ``max_ongoing_requests`` (Ray's default 5) caps what Ray hands one replica at once: below
    the batch size the batcher would never see a full batch. A replica holds up to
    ``max_queued`` waiting plus one running batch; more wait in Ray's proxy.
    """
    return {
        "num_replicas": replicas,
        "max_ongoing_requests": max_queued + max_batch_size,
        "ray_actor_options": {"num_gpus": 1} if gpu else {"num_cpus": 1},
    }


def _replica_options(args: argparse.Namespace) -> dict[str, Any]:
    """The flags a replica needs to build its app (picklable: no ``func``), the checkpoint made absolute."""
    options = {k: v for k, v in vars(args).items() if k != "func"}
    options["checkpoint"] = os.path.abspath(args.checkpoint)
    if args.allowed_local_media_path is not None:
        options["allowed_local_media_path"] = os.path.abspath(args.allowed_local_media_path)
    return options


def _uses_gpu(device: str | None) -> bool:
    import ray

    if device in (None, "auto"):
        return ray.cluster_resources().get("GPU", 0) >= 1
    if device not in ("cpu", "cuda"):
        raise ValueError(
            f"--device: {device!r} with --replicas; Ray places each replica, use cpu, cuda or auto"
        )
    return device == "cuda"


def _free_port(host: str) -> int:
    # Ray's proxy cannot report a port the OS picked, so pick one here (a free port, a moment's race)
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _start_proxy(host: str, port: int) -> tuple[str, int]:
    """Start Ray Serve's HTTP proxy on ``host:port`` (0: a free port); the address it really serves.

    Serve already running in a joined cluster keeps its own proxy address (Ray ignores new
    HTTP options then, with a warning), so the address is read back from Serve's client.
    """
    from ray.serve.context import _get_global_client

    serve.start(http_options={"host": host, "port": port or _free_port(host)})
    http = _get_global_client().http_config
    if (port and http.port != port) or http.host != host:
        print(f"vedas serve: Ray Serve already serves on {http.host}:{http.port}; using it", file=sys.stderr)
    return http.host, http.port


def _wait_ready(url: str, timeout: float) -> None:
    """Until the proxy routes to the app: serve.run returns once replicas run, routes may lag."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=10) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url}/health: no answer within {timeout:.0f} s")
        time.sleep(0.2)


def _init_ray(args: argparse.Namespace) -> None:
    import ray

    if args.ray_address:
        ray.init(address=args.ray_address, log_to_driver=False)
        return
    # a private cluster: the replicas' CPUs (GPUs are detected), no dashboard. Ray binds its own
    # ports to the node's address, never loopback (it resolves 127.0.0.1 away), behind Ray's
    # token authentication; the HTTP endpoint binds --host
    cpus = args.replicas if args.device == "cpu" else max(os.cpu_count() or 1, args.replicas)
    ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False)


def serve_replicas(args: argparse.Namespace, settings: SettingsFn) -> int:
    """Run the app as a Ray Serve deployment of ``args.replicas`` replicas until SIGTERM/SIGINT.

    ``settings(args, vm)`` builds each replica's :class:`~vedas.serve.app.Settings` from the
    flags (``vedas.serve.cli.settings_from_args``, passed in: Ray ships it to the replicas by name).
    """
    import ray

    _init_ray(args)
    # after ray.init, which installs a SIGTERM handler that aborts the process
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    try:
        gpu = _uses_gpu(args.device)
        host, port = _start_proxy(args.host, args.port)
        options = deployment_options(args.replicas, args.max_batch_size, args.max_queued, gpu)
        options["graceful_shutdown_timeout_s"] = args.shutdown_grace_s
        device = "cuda" if gpu else "cpu"
        app = VedasReplica.options(**options).bind(_replica_options(args), device, settings)
        try:
            serve.run(app, name=APP_NAME, route_prefix="/")
        except Exception as e:  # Ray's own error types for a replica that failed to start
            print(f"vedas serve: Ray Serve could not start the replicas: {e}", file=sys.stderr)
            return 1
        shown = f"[{host}]" if ":" in host else host
        url = f"http://{shown}:{port}"
        _wait_ready(url, 120)
        name = args.served_model_name or Path(args.checkpoint).name
        # the single process's line, word for word: scripts parse it (vedas.serve.process)
        print(f"vedas serve: listening on {url} (model {name!r})", flush=True)
        print(f"vedas serve: {args.replicas} replicas on Ray Serve ({device})", file=sys.stderr, flush=True)
        stop.wait()
    except ValueError as e:
        print(f"vedas serve: {e}", file=sys.stderr)
        return 2
    finally:
        # Ray's replicas get the same shutdown as the single process (the batcher's lifespan end):
        # the running batch finishes. A joined cluster keeps its other apps.
        if args.ray_address:
            serve.delete(APP_NAME)
        else:
            serve.shutdown()
        ray.shutdown()
    return 0
