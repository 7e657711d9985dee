"""Shared fixtures: tiny random models of the real architectures and random non-square images.

Run the suite with ``make test`` (or ``.venv/bin/pytest -q``). No network is used. Every test
passes on its own and in any order (pytest-randomly shuffles it; ``-p randomly
--randomly-seed=N`` replays one order, ``-p no:randomly`` keeps the file order):

- each test starts from the same RNG state (:func:`seeded`), and
- a test that changes the shared tiny model or process-wide torch settings fails
  (:func:`shared_state_unchanged`): build what you mutate (``copy.deepcopy(model)``, a fresh
  ``vedas.tiny_model``) and restore settings you change.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

import vedas
from vedas.config import LatentConfig
from vedas.model import VedasModel

ARCHS = ["qwen2_vl", "qwen2_5_vl", "qwen3_vl", "chameleon"]
SEED = 0


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # every device's generator


@pytest.fixture(autouse=True)
def seeded(shared_state_unchanged) -> None:
    """Seed ``random``, numpy and torch with :data:`SEED` before the test's other function-scoped fixtures.

    Autouse function fixtures run after the session fixtures a test needs, so it does not matter
    which test happened to build those (``tiny`` and the trained checkpoints draw from torch).
    pytest-randomly, when active, reseeds ``random`` and numpy (never torch) from ``--randomly-seed``
    and the test's id before its setup, its body and its teardown, so a test body sees those two
    seeded from there; the tests use only torch's global generator (their ``random`` and numpy
    draws take explicit seeds), and its state no longer depends on what ran before.
    """
    seed_all(SEED)


def _settings() -> dict[str, Any]:
    from vedas.method import routing

    return {
        "torch threads": torch.get_num_threads(),
        "grad enabled": torch.is_grad_enabled(),
        "default dtype": torch.get_default_dtype(),
        "deterministic algorithms": torch.are_deterministic_algorithms_enabled(),
        "routing allowed": routing.is_allowed(),
        "routing segments unset": routing.current_segments() is None,
    }


def _fingerprint(model: torch.nn.Module, processor: Any) -> dict[str, Any]:
    """What a test could change in place on a shared model: weights, grads, flags, hooks, tokenizer.

    transformers installs its output-capture hooks on a model the first time attentions or
    hidden states are requested, and keeps them (they do nothing outside that request): not counted.
    """
    params = list(model.parameters())
    with torch.no_grad():
        weights = float(sum(p.double().sum() for p in params))
    return {
        "weights": weights,
        "dtypes": {str(p.dtype) for p in params},
        "grads": sum(p.grad is not None for p in params),
        "requires_grad": sum(p.requires_grad for p in params),
        "training": sum(m.training for m in model.modules()),
        "hooks": sum(
            not getattr(h, "__module__", "").startswith("transformers.")
            for m in model.modules()
            for h in [*m._forward_hooks.values(), *m._forward_pre_hooks.values(), *m._backward_hooks.values()]
        ),
        "attention": model.config.get_text_config()._attn_implementation,
        "vocabulary": len(processor.tokenizer),
        "padding side": processor.tokenizer.padding_side,
    }


@pytest.fixture(autouse=True)
def shared_state_unchanged(request) -> Any:
    """Fail a test that leaves torch's process-wide settings or a shared model (``tiny``, ``vm``) changed."""
    models = {}
    if "tiny" in request.fixturenames:
        model, processor = request.getfixturevalue("tiny")
        VedasModel(model, processor)  # what every VedasModel does to them first, not the test's change
        models[id(model)] = model, processor
    if "vm" in request.fixturenames:  # over ``tiny`` here; a module's own in tests/method/test_tto.py
        vm = request.getfixturevalue("vm")
        models[id(vm.model)] = vm.model, vm.processor
    before = _settings(), [_fingerprint(*m) for m in models.values()]
    yield
    after = _settings(), [_fingerprint(*m) for m in models.values()]
    for what, old, new in [("settings", [before[0]], [after[0]]), ("shared model", before[1], after[1])]:
        for o, n in zip(old, new):
            changed = {k: (o[k], n[k]) for k in o if o[k] != n[k]}
            assert not changed, f"the test changed the {what} (before, after): {changed}"


def random_image(h: int, w: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray((rng.random((h, w, 3)) * 255).astype("uint8"))


@pytest.fixture(scope="session")
def make_image():
    """``make_image(h, w, seed)`` -> a random RGB PIL image."""
    return random_image


@pytest.fixture(scope="session")
def synth_data(tmp_path_factory):
    """``synth_data(train, test, seed=0)`` -> a directory of the synthetic benchmark, written once per session."""
    from vedas.data import synth

    made: dict[tuple[int, int, int], Any] = {}

    def make(train: int, test: int, seed: int = 0):
        if (train, test, seed) not in made:
            out = tmp_path_factory.mktemp(f"synth_{train}_{test}_{seed}")
            synth.write(out, train=train, test=test, seed=seed, progress=False)
            made[train, test, seed] = out
        return made[train, test, seed]

    return make


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
