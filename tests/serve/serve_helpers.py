"""Helpers of the serve tests: start and stop a real ``vedas serve`` process, build OpenAI messages.

server = start_server(checkpoint, log_path, "--max-batch-size", "8")   # binds --port 0
client.chat.completions.create(model=server.name, messages=[user("Count.", image)])
stop_server(server)
"""

from __future__ import annotations

import base64
import io
import json
import os
import select
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

LATENTS = 2  # the tiny checkpoint's latent count
MAX_TOKENS = 6


@dataclass
class Server:
    url: str
    name: str
    checkpoint: Path
    process: subprocess.Popen
    log: Path


def random_image(h: int, w: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray((rng.random((h, w, 3)) * 255).astype("uint8"))


def data_url(image: Image.Image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def user(question: str, *images: Image.Image | str) -> dict[str, Any]:
    """A user message: the question's text part, then one ``image_url`` part per image (PIL or a URL/path)."""
    parts: list[dict[str, Any]] = [{"type": "text", "text": question}]
    for im in images:
        url = im if isinstance(im, str) else data_url(im)
        parts.append({"type": "image_url", "image_url": {"url": url}})
    return {"role": "user", "content": parts}


def start_server(checkpoint: Path, log: Path, *flags: str, timeout: float = 120.0) -> Server:
    """``vedas serve --port 0 …`` in a subprocess; returns once it says where it listens."""
    cmd = [sys.executable, "-m", "vedas.cli", "serve", "--checkpoint", str(checkpoint), "--port", "0"]
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    err = log.open("w")
    proc = subprocess.Popen([*cmd, *flags], stdout=subprocess.PIPE, stderr=err, text=True, env=env)
    deadline = time.monotonic() + timeout
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 0.5)
        if ready:
            line = proc.stdout.readline()
            if "listening on" in line:
                url = line.split("listening on ")[1].split()[0]
                return Server(url, checkpoint.name, checkpoint, proc, log)
        if proc.poll() is not None:
            break
    proc.kill()
    raise AssertionError(f"vedas serve did not start: {log.read_text()[-3000:]}")


def stop_server(server: Server) -> None:
    server.process.send_signal(signal.SIGTERM)
    try:
        server.process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait()


def http(method: str, url: str, body: bytes | None = None) -> tuple[int, Any]:
    """One plain HTTP request (stdlib only): the status and the decoded JSON answer."""
    req = urllib.request.Request(url, data=body, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def health(server: Server) -> dict[str, Any]:
    status, body = http("GET", f"{server.url}/health")
    assert status == 200, body
    return body
