"""A ``checkpoints/step-N`` describes itself (``model.yaml`` and the weights it names, beside the
training state): ``vedas.load`` of it needs neither the training recipe nor the training data, and
generates exactly what ``final/`` generates at the same step. An older step-N without the description
is refused with the one command that adds it, after which it loads the same."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
import torch

import vedas
from conftest import ENV
from vedas.checkpoint import DELTA_FILE, STEP_MODEL_FILE, WEIGHTS_DIR
from vedas.errors import CheckpointError

QUESTIONS = ["How many red squares?", "What colour is the circle?"]
CHOICES = [["2", "3", "4", "5"], None]


@pytest.fixture
def images(tmp_path) -> list[str]:
    """Two image files: the answers go through the vision tower and visual replay."""
    from PIL import Image

    paths = [str(tmp_path / "red.png"), str(tmp_path / "gradient.png")]
    Image.new("RGB", (64, 48), (200, 30, 30)).save(paths[0])
    Image.radial_gradient("L").convert("RGB").resize((56, 56)).save(paths[1])
    return paths


def _answers(vm, images: list[str]) -> list[str]:
    texts, _ = vm.generate(images, QUESTIONS, CHOICES, max_new_tokens=6)
    return texts


def _same_weights(a, b) -> None:
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert a.extras.configs() == b.extras.configs()
    for name, module in a.extras.modules().items():
        ea, eb = module.state_dict(), b.extras.modules()[name].state_dict()
        assert ea.keys() == eb.keys() and all(torch.equal(ea[k], eb[k]) for k in ea)


def _load_in_subprocess(step, images: list[str]) -> dict:
    """``vedas.load`` of ``step`` in a fresh interpreter: its answers and whether it imported vedas.train."""
    code = (
        "import json, sys, vedas\n"
        f"vm = vedas.load({str(step)!r})\n"
        f"texts, _ = vm.generate({images!r}, {QUESTIONS!r}, {CHOICES!r}, max_new_tokens=6)\n"
        "print(json.dumps({'texts': texts, 'train': sorted(m for m in sys.modules if m.startswith('vedas.train'))}))"
    )
    res = subprocess.run([sys.executable, "-c", code], env=ENV, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_a_step_on_a_named_base_loads_as_final_without_the_recipe(vedas_cli, train_args, tmp_path, images):
    """LoRA with routing on a saved base that has routers of its own (the run replaces them): step-N
    keeps only the changed weights and its extras, and points to the base."""
    from vedas.method.routing import RoutingConfig, enable_routing

    base = vedas.VedasModel(*vedas.tiny_model("qwen2_vl", hidden=64, layers=2, seed=0))
    enable_routing(base, RoutingConfig(alpha=8))
    base = base.save(tmp_path / "base")
    out = tmp_path / "run"
    extra = {
        "model.base": base,
        "lora.enabled": "true",
        "lora.r": 4,
        "routing": "{alpha: 4}",
        "run.save_every": 2,
    }
    code, _, err = vedas_cli.main(*train_args(out, **extra))
    assert code == 0, err
    step = out / "checkpoints" / "step-4"
    assert (step / DELTA_FILE).is_file() and not (step / WEIGHTS_DIR).exists()
    final, last = vedas.load(out / "final"), vedas.load(step)
    _same_weights(final, last)
    assert last.trained == final.trained and last.config == final.config
    answers = _answers(final, images)
    seen = _load_in_subprocess(step, images)
    assert seen == {"texts": answers, "train": []}
    base.rename(tmp_path / "moved")  # the step points to its base: gone, the error names both
    with pytest.raises(
        CheckpointError, match=rf"{step}: its base model .* {base}: no such checkpoint directory"
    ):
        vedas.load(step)
    (tmp_path / "moved").rename(base)
    early = vedas.load(out / "checkpoints" / "step-2")
    assert any(not torch.equal(v, early.model.state_dict()[k]) for k, v in final.model.state_dict().items())


@pytest.mark.slow
def test_a_tiny_step_loads_as_the_recipe_rebuilt_it_and_an_old_one_is_upgraded(
    vedas_cli, train_args, tmp_path, images
):
    """The tiny model (its weights and BPE from the seed and the data) is written whole; the rebuild by
    the recipe (the old path) gives the same model; an old step-N is refused, then upgraded."""
    from vedas.train.recipe import load_step

    out = tmp_path / "run"
    code, _, err = vedas_cli.main(*train_args(out, **{"run.save_every": 2, "routing": "{alpha: 4}"}))
    assert code == 0, err
    step = out / "checkpoints" / "step-2"
    described = vedas.load(step)
    rebuilt = load_step(step)
    _same_weights(described, rebuilt)
    assert described.trained == rebuilt.trained and described.config == rebuilt.config
    answers = _answers(rebuilt, images)
    assert _answers(described, images) == answers
    seen = _load_in_subprocess(step, images)
    assert seen == {"texts": answers, "train": []}
    _same_weights(vedas.load(out / "final"), vedas.load(out / "checkpoints" / "step-4"))

    old = tmp_path / "old"
    shutil.copytree(step, old)
    (old / STEP_MODEL_FILE).unlink()
    shutil.rmtree(old / WEIGHTS_DIR)
    for f in old.glob("routing.safetensors"):
        f.unlink()
    with pytest.raises(
        CheckpointError, match=rf"{old}: .* add it once with: python -m vedas.train.upgrade {old}"
    ):
        vedas.load(old)
    res = subprocess.run(
        [sys.executable, "-m", "vedas.train.upgrade", str(old)],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == f"wrote {old / STEP_MODEL_FILE}"
    upgraded = vedas.load(old)
    _same_weights(upgraded, rebuilt)
    assert _answers(upgraded, images) == answers
