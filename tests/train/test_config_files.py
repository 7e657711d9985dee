"""Every shipped YAML validates against the code (unknown keys or bad values would fail here)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vedas.method.curriculum import num_stages, stage_for_epoch
from vedas.train.config import load_config

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "configs").glob("*.yaml"))


def test_there_are_paper_and_demo_configs():
    names = {p.stem for p in CONFIGS}
    assert {
        "m3cot_qwen2vl_7b",
        "scienceqa_qwen2vl_7b",
        "gqa_qwen2vl_7b",
        "onethinker_qwen25vl_7b",
        "m3cot_qwen3vl_8b",
        "synthetic_tiny",
        "m3cot_chameleon_7b",
        "scienceqa_chameleon_7b",
        "gqa_chameleon_7b",
    } <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_config_loads_and_validates(path):
    cfg = load_config(str(path), [])
    assert cfg.method == "vedas"
    if path.stem.endswith(("_7b", "_8b")):  # the paper's settings (Qwen3-VL-8B takes the 7B ones)
        assert (cfg.latent.latents, cfg.latent.replay_k, cfg.scfvr.window) == (4, 32, 3)
        assert cfg.optim.lr == 4e-5 and cfg.optim.epochs == 16 and cfg.optim.batch_size == 8
        assert cfg.scfvr.weight == 0.2 and cfg.lora.enabled and (cfg.lora.r, cfg.lora.alpha) == (64, 16)
        assert cfg.routing is not None and cfg.routing.depth == 1
        ds = json.loads((path.parents[0] / "deepspeed" / "zero2.json").read_text())
        assert ds["zero_optimization"]["stage"] == 2
        assert cfg.run.deepspeed == "configs/deepspeed/zero2.json"
        # the schedule reaches the last stage (all latents) before training ends
        last = num_stages(cfg.latent.latents, cfg.curriculum)
        assert stage_for_epoch(cfg.optim.epochs - 1, cfg.latent.latents, cfg.curriculum) == last
        # the backbone named in the file name is the one loaded
        base = {"qwen2vl": "Qwen/Qwen2-VL-7B-Instruct", "chameleon": "facebook/chameleon-7b"}
        for key, hub_id in base.items():
            if f"_{key}_" in path.stem:
                assert cfg.model.base == hub_id and cfg.run.output_dir == f"runs/{path.stem}"
