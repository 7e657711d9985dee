"""Fixtures of the serve tests: a tiny checkpoint, a real ``vedas serve`` process on a loopback port, and
the official ``openai`` client talking to it.

    def test_x(server, client, local_vm):   # server.url / .name; client: openai.OpenAI; local_vm: same weights
        client.chat.completions.create(model=server.name, messages=[user("Count.", image)])

The server binds ``--port 0`` (a free port the OS picks), so test runs at the same time never collide.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from serve_helpers import LATENTS, MAX_TOKENS, start_server, stop_server

import vedas
from vedas.config import LatentConfig

pytest.importorskip("fastapi", reason="the serve extra (make setup installs it)")
openai = pytest.importorskip("openai", reason="the serve extra (make setup installs it)")


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model, processor = vedas.tiny_model("qwen2_vl", hidden=64, layers=2, heads=4, kv_heads=2, seed=0)
    vm = vedas.VedasModel(
        model, processor, LatentConfig(latents=LATENTS, replay_k=4, max_new_tokens=MAX_TOKENS)
    )
    return vm.save(tmp_path_factory.mktemp("serve") / "tiny")


@pytest.fixture(scope="session")
def local_vm(checkpoint):
    """The same checkpoint loaded in the test process: the reference the server must equal."""
    return vedas.load(checkpoint)


@pytest.fixture(scope="session")
def media_dir(tmp_path_factory) -> Path:
    """The one directory the shared server may read images from (--allowed-local-media-path)."""
    return tmp_path_factory.mktemp("media")


@pytest.fixture(scope="module")
def server(checkpoint, tmp_path_factory, media_dir):
    log = tmp_path_factory.mktemp("log") / "serve.log"
    s = start_server(checkpoint, log, "--max-body-mb", "1", "--allowed-local-media-path", str(media_dir))
    yield s
    stop_server(s)


@pytest.fixture(scope="module")
def client(server):
    c = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=120)
    yield c
    c.close()
