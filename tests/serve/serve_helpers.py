"""Helpers of the serve tests: the tiny checkpoint's settings, random images, plain HTTP calls.

Starting a server and building messages are library functions (``vedas.serve.process``,
``vedas.serve.protocol.user_message``), re-exported here under short names.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

import numpy as np
from PIL import Image

from vedas.serve.process import Server, start_server, stop_server
from vedas.serve.protocol import data_url
from vedas.serve.protocol import user_message as user

__all__ = [
    "LATENTS",
    "MAX_TOKENS",
    "Server",
    "data_url",
    "health",
    "http",
    "random_image",
    "start_server",
    "stop_server",
    "user",
]

LATENTS = 2  # the tiny checkpoint's latent count
MAX_TOKENS = 6


def random_image(h: int, w: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray((rng.random((h, w, 3)) * 255).astype("uint8"))


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
