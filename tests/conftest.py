"""Shared fixtures: tiny random models of the real architectures and random non-square images.

Run the suite with ``make test`` (or ``.venv/bin/pytest -q``). No network is used.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import vedas
from vedas.config import LatentConfig
from vedas.model import VedasModel

ARCHS = ["qwen2_vl", "qwen2_5_vl"]


def random_image(h: int, w: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray((rng.random((h, w, 3)) * 255).astype("uint8"))


@pytest.fixture(scope="session")
def make_image():
    """``make_image(h, w, seed)`` -> a random RGB PIL image."""
    return random_image


@pytest.fixture(scope="session", params=ARCHS)
def arch(request) -> str:
    return request.param


@pytest.fixture(scope="session")
def tiny(arch):
    """(model, processor) of a 2-layer tiny model; shared, so tests must not train it."""
    torch.manual_seed(0)
    return vedas.tiny_model(arch, hidden=64, layers=2, heads=4, kv_heads=2, seed=0)


@pytest.fixture
def vm(tiny) -> VedasModel:
    model, processor = tiny
    return VedasModel(model, processor, LatentConfig(latents=3, replay_k=6, max_new_tokens=6))


@pytest.fixture(scope="session")
def batch3():
    """Three samples with different prompt lengths and non-square images of different sizes."""
    images = [random_image(112, 168, 1), random_image(84, 140, 2), random_image(140, 84, 3)]
    questions = [
        "What is in the picture?",
        "How many red squares are there, and how many blue circles are left after removing two?",
        "Count.",
    ]
    choices = [["one", "two"], ["1", "2", "3", "4"], None]
    return images, questions, choices


def pytest_collection_modifyitems(config, items):
    """Tests marked ``gpu`` run only where CUDA is available."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (GPU-only path: bf16, flash attention)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
