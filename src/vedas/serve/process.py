"""Start and stop a ``vedas serve`` subprocess on a free loopback port (tests, benchmarks, scripts).

    server = start_server("runs/demo/vedas/final", "serve.log", "--max-batch-size", "16")
    server.url, server.name        # "http://127.0.0.1:PORT", the served model id
    stop_server(server)            # SIGTERM: the running batch finishes, queued requests get 503, exit 0

The server binds ``--port 0`` (the OS picks a free port) and says which port on its first
stdout line, so runs at the same time on one machine never collide.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Server:
    url: str
    name: str
    process: subprocess.Popen
    log: Path


def start_server(
    checkpoint: str | os.PathLike, log: str | os.PathLike, *flags: str, timeout: float = 180.0
) -> Server:
    """``vedas serve --checkpoint CKPT --port 0 FLAGS…``; returns once it listens (stderr goes to ``log``)."""
    cmd = [sys.executable, "-m", "vedas.cli", "serve", "--checkpoint", os.fspath(checkpoint), "--port", "0"]
    log = Path(log)
    with log.open("w") as err:
        proc = subprocess.Popen([*cmd, *flags], stdout=subprocess.PIPE, stderr=err, text=True)
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if select.select([proc.stdout], [], [], 0.5)[0]:
            line = proc.stdout.readline()
            if "listening on" in line:
                url = line.split("listening on ")[1].split()[0]
                name = line.split("(model ")[1].rstrip(")\n").strip("'\"")
                return Server(url, name, proc, log)
        if proc.poll() is not None:
            break
    proc.kill()
    proc.wait()
    raise RuntimeError(f"vedas serve did not start within {timeout:.0f} s: {log.read_text()[-3000:]}")


def stop_server(server: Server, timeout: float = 30.0) -> int:
    """SIGTERM, then SIGKILL if it has not exited within ``timeout``; returns the exit code."""
    server.process.send_signal(signal.SIGTERM)
    try:
        return server.process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        server.process.kill()
        return server.process.wait()
    finally:
        if server.process.stdout is not None:
            server.process.stdout.close()
