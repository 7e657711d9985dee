"""Fixtures for the analysis tests: one tiny synthetic benchmark and one tiny trained checkpoint, shared.

Run with ``.venv/bin/pytest -q tests/analysis``. The checkpoint is a 2-layer, hidden-64 Qwen2-VL
trained with the ``vedas`` recipe (T_r = 2, K = 4) for 8 steps on 8 synthetic records — a few
seconds — so every ``vedas analyze`` command runs on a real trained checkpoint.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
TINY = {
    "hidden": 64,
    "layers": 2,
    "heads": 4,
    "kv_heads": 2,
    "vision_depth": 1,
    "vision_hidden": 32,
    "max_pixels": 12544,
}


@pytest.fixture(scope="session")
def synth_dir(synth_data) -> Path:
    return synth_data(16, 8)


@pytest.fixture(scope="session")
def train_config(synth_dir, tmp_path_factory) -> Path:
    """A complete training YAML (configs/synthetic_tiny.yaml with tiny sizes); LoRA is off in it."""
    base = yaml.safe_load((ROOT / "configs/synthetic_tiny.yaml").read_text())
    base["model"]["tiny"] = dict(TINY)
    base["data"].update({"path": str(synth_dir), "limit": 8})
    base["latent"] = {"latents": 2, "replay_k": 4}
    base["optim"].update({"batch_size": 4, "epochs": 4, "lr": 3e-3, "warmup_ratio": 0.0})
    out = tmp_path_factory.mktemp("analysis_cfg")
    base["run"] = {"output_dir": str(out / "run"), "progress": False, "log_every": 1}
    path = out / "tiny.yaml"
    path.write_text(yaml.safe_dump(base, sort_keys=False))
    return path


@pytest.fixture(scope="session")
def checkpoint(train_config) -> Path:
    """``<output_dir>/final`` of a tiny ``vedas train`` run."""
    from vedas.train.recipe import load_config, main

    return main(load_config(str(train_config), []))


@pytest.fixture(scope="session")
def test_records(synth_dir) -> list:
    from vedas.data import load

    return list(load("synthetic", path=str(synth_dir), split="test"))


def _assert_png(path: Path, min_w: int = 300, min_h: int = 150) -> tuple[int, int]:
    """The file is a PNG of at least that size, with real content (many colours, not one flat fill)."""
    assert path.is_file() and path.stat().st_size > 5_000, path
    with Image.open(path) as im:
        assert im.format == "PNG"
        assert im.size[0] >= min_w and im.size[1] >= min_h, im.size
        rgb = np.asarray(im.convert("RGB"))
    assert len(np.unique(rgb.reshape(-1, 3), axis=0)) > 20, f"{path} is (nearly) one flat colour"
    return im.size


@pytest.fixture(scope="session")
def assert_png():
    """``assert_png(path, min_w, min_h)``: open the PNG with PIL and check its size and content."""
    return _assert_png
